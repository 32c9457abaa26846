"""stagetune: does incremental (layer-wise growing) training beat full-depth training at equal compute?"""

from stagetune.errors import ConfigError, DivergenceError, StagetuneError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DivergenceError", "StagetuneError", "__version__"]
