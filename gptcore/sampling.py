"""How to sample text: the settings and their bounds.

No torch, so a page can build and check the settings without loading it; the sampling
itself is ``gptcore.generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptcore.errors import GptdashError

MAX_NEW_TOKENS = 4096
MAX_SEED = 2**31 - 1  # as a run's seed and the pages' seed fields


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int | None = None

    def validate(self) -> SamplingConfig:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise GptdashError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, "
                               f"not {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 10.0:
            raise GptdashError(f"temperature must be between 0 and 10, not {self.temperature}")
        if self.top_k < 0:
            raise GptdashError(f"top-k must be 0 (off) or positive, not {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GptdashError(f"top-p must be in (0, 1], not {self.top_p}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise GptdashError(f"seed must be between 0 and {MAX_SEED}, not {self.seed}")
        return self
