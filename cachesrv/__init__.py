"""cachesrv: a content-addressed cache and recording proxy for air-gapped builds."""

__version__ = "0.1.0"
