"""babeltower: how a code language model acquires a new programming language.

Library functions live in the concern packages (corpus, mixture, train, probes,
evaluate, report); the CLI in ``babeltower.cli`` is a thin layer over them.
"""

__version__ = "0.1.0"
