"""Entry point of ``python -m root_optax.demo``."""

from root_optax.demo._train import main

if __name__ == "__main__":
    main()
