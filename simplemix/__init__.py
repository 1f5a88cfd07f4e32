"""simplemix: the helper package of the SimpleMix book.

Importing it has no side effects: no seeds, downloads, logging or warning-filter changes.
Submodules are imported explicitly (``from simplemix import data``) so that ``import simplemix``
stays cheap and does not pull in torch.
"""

__version__ = "0.1.0"
