"""mtopnet: M-TOPnet redshifts, stellar masses and SFRs from galaxy spectra, with a MOONS simulator."""
__version__ = "0.1.0"
