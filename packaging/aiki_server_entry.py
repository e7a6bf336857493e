"""Entry script of the frozen one-file `aiki-server` (see aiki-server.spec): the same program as
`python -m aiki_server` and the `aiki-server` console script."""

from aiki_server.cli import main

if __name__ == "__main__":
    main()
