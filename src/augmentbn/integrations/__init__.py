"""augmentbn's norm layers by name in other libraries' factories.

- :func:`augmentbn.integrations.timm.register`: ``timm.create_model(..., norm_layer="nabn")``
  and timm's norm and norm-act factories (``pip install "augmentbn[timm]"``).
- :func:`augmentbn.integrations.monai.register`: ``Norm["nabn", 3]``, ``UNet(norm="iebn")``
  and every MONAI network that takes ``norm=`` (``pip install "augmentbn[monai]"``).

Registration is explicit: importing augmentbn neither imports these libraries (seconds each) nor
writes into their tables, and neither library offers an entry point through which a plugin could
register itself. Call ``register()`` once, before building models by name; it is idempotent.
"""

__all__: list[str] = []
