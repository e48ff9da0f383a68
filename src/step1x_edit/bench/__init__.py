"""GEdit-Bench evaluation: dataset loading (``dataset``), generation (``generate``), VIEScore judging with any
judge (``judges``, ``judging``, ``viescore``), the official statistics (``stats``), reports (``report``), official
CSV import (``official``) and pairwise ranking (``pairwise``). See ``docs/bench.md``."""
