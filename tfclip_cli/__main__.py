"""`python -m tfclip_cli` runs the `tfclip` command (also what torchrun launches)."""

from tfclip_cli.cli import main

if __name__ == "__main__":
    main()
