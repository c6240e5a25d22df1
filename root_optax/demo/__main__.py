"""Entry point of ``python -m root_optax.demo``."""

from root_optax.demo import main

if __name__ == "__main__":
    main()
