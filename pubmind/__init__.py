"""pubmind: the base package: one settings tree, the error hierarchy, durable writes, shared records, the CLI.

Model weights are never fetched from a hub at run time unless asked: importing pubmind (which every entry
point does first) defaults ``HF_HUB_OFFLINE=1``; set ``HF_HUB_OFFLINE=0`` to allow downloads.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
