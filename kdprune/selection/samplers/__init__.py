"""Per-epoch samplers, one module each, registered in ``SAMPLERS`` (``register_sampler`` on a
:class:`Sampler` subclass that declares its options, fraction option, epoch size and cross-key
``check``; see ``base``). Every module of this package is imported here, so adding a sampler is
adding one file."""
from kdprune.registry import discover
from kdprune.selection.samplers.base import SAMPLERS, Sampler, make_sampler, register_sampler  # noqa: F401

discover(__name__, __path__)
