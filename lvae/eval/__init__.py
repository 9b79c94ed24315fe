"""Measuring codecs: the rate–distortion sweep (:mod:`.evaluation`), the λ values it uses
(:mod:`.lambdas`), the result JSON (:mod:`.results`), the published anchor curves
(:mod:`.anchors`), JPEG/WebP/AVIF through Pillow (:mod:`.classical`), BD-rate between curves
(:mod:`.compare`) and plots (:mod:`.plot`). The command lines are in :mod:`lvae.cli`."""
