"""``python -m tickwire``: the same as the ``tickwire`` command."""

from tickwire.framework.cli import main

if __name__ == "__main__":
    main()
