"""effnet-lightning command line: `python cli.py fit|validate|test --help`."""

from effnet_lightning.cli import main

if __name__ == "__main__":
    main()
