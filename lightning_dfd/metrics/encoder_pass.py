"""Moved: the encoder pass now lives below both layers, in :mod:`lightning_dfd.encoders.encoder_pass`.

These names stay importable from here for code written against earlier versions.
"""

import warnings

from lightning_dfd.encoders.encoder_pass import (  # noqa: F401 - re-exported
    EncodedBatch,
    EncoderPass,
    FeatureCacheArg,
    expand_ids,
    input_versions,
    make_feature_cache,
    pass_key,
    sharing,
)
from lightning_dfd.encoders.identity import weights_digest  # noqa: F401 - re-exported

warnings.warn("lightning_dfd.metrics.encoder_pass moved to lightning_dfd.encoders.encoder_pass",
              DeprecationWarning, stacklevel=2)
