"""mosgeo: the κ-stereographic model (hyperbolic, Euclidean, spherical) in one code path.

``from mosgeo import Stereographic``; the functional API is :mod:`mosgeo.math` (a drop-in
for ``geoopt.manifolds.stereographic.math``), the charts into the ambient space are
:mod:`mosgeo.charts`, every numeric guard is in :mod:`mosgeo.numerics`.
"""

from . import charts, math, numerics
from .charts import (
    ambient_dist,
    clip_spacelike,
    from_ambient,
    from_spacelike,
    lorentz_inner,
    to_ambient,
    to_spacelike,
)
from .distributions import WrappedNormal
from .manifold import (
    Euclidean,
    PoincareBall,
    PoincareBallExact,
    SphereProjection,
    SphereProjectionExact,
    Stereographic,
    StereographicExact,
)

__version__ = "0.1.0"

__all__ = [
    "Stereographic",
    "StereographicExact",
    "PoincareBall",
    "PoincareBallExact",
    "SphereProjection",
    "SphereProjectionExact",
    "Euclidean",
    "WrappedNormal",
    "math",
    "charts",
    "numerics",
    "to_ambient",
    "from_ambient",
    "to_spacelike",
    "from_spacelike",
    "clip_spacelike",
    "lorentz_inner",
    "ambient_dist",
]
