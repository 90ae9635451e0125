"""Studies: configuration (``config``), the runner (``runner``) and figures (``figures``)."""
