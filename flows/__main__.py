"""``python -m flows <command>``: the command line, cli/main.py (DVC's stage commands run this).

Output-neutral like all of cli/: it pins the CPU kernels, configures the environment, installs the
stages' observer and calls the stage's flow; ``load_params(root, stage)`` verifies the pins.
"""
from cli.main import main

if __name__ == "__main__":
    main()
