"""Data files shipped with the package: project templates (``projects/``) and doc templates (``docs/``)."""
