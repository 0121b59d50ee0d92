"""Start orpoll: ``python run.py`` (``--help`` lists every setting)."""

from orpoll.server import main

if __name__ == "__main__":
    main()
