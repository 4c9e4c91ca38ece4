"""Side-by-side runs of other redshift tools on the project's spectra (Redrock).

* :mod:`mtopnet.baselines.make_templates` builds Redrock-format galaxy templates (a PCA basis)
  from rest-frame spectra of the simulator's own galaxy population;
* :mod:`mtopnet.baselines.redrock` runs Redrock on a spectrum store with those templates and
  each arm's line-spread function (``mtopnet baseline redrock``).

Redrock (DESI, BSD-3) is an optional dependency, imported only when a run starts.
"""
