"""The open-set detector: the closed-set detector's trunk, FPN and box/centerness head, with the class layer
replaced by region embeddings scored against query vectors (engine.runtime.open_detector_format).

Each location's head tower output goes through an embedding conv and a small adaptor (1x1 MLP) into the 384-d
sentence space of all-MiniLM-L6-v2; class logit = scale * cos(region, query) + bias (the DOSOD / YOLO-World pattern
with a text-only encoder). During training the queries are the known classes' text embeddings, one phrasing drawn
per class and step, so the head learns the space rather than one fixed vector per class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainers.detector.model import STRIDES, Detector, DetectorArch, Head, decode

PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # prior 0.01, as the closed-set class layer
INIT_SCALE = 10.0


class OpenHead(nn.Module):
    """Tower, box distances and centerness as the closed-set Head; region embeddings instead of class logits."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        base = Head(width, 1)  # the same tower / regression / centerness layers and their initialisation
        self.tower, self.ctr, self.reg, self.scales = base.tower, base.ctr, base.reg, base.scales
        self.embed = nn.Conv2d(width, width, 3, padding=1)
        self.adaptor = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, dim, 1))
        # Learnt calibration of text queries: cosine -> class logit.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(INIT_SCALE)))
        self.logit_bias = nn.Parameter(torch.tensor(PRIOR_BIAS))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> region embeddings [B, L, D] (L2-normalised), centerness logits [B, L], side distances [B, L, 4]."""
        emb, ctr, reg = [], [], []
        for i, (f, stride) in enumerate(zip(feats, STRIDES, strict=True)):
            t = self.tower(f)
            emb.append(self.adaptor(F.relu(self.embed(t))).flatten(2).transpose(1, 2))
            ctr.append(self.ctr(t).flatten(1))
            reg.append((F.relu(self.reg(t) * self.scales[i]) * stride).flatten(2).transpose(1, 2))
        return F.normalize(torch.cat(emb, 1), dim=-1), torch.cat(ctr, 1), torch.cat(reg, 1)

    def calibration(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logit_scale.exp(), self.logit_bias


def query_logits(emb: torch.Tensor, queries: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """Region embeddings [B, L, D], queries [C, D] (normalised), calibration [C, 2] -> class logits [B, L, C]."""
    return emb @ queries.T * calibration[:, 0] + calibration[:, 1]


class OpenDetector(Detector):
    """`arch.num_classes` is the number of trained (known) classes; `prompt_embeddings` [K, P, D] holds each known
    class's phrasings (P, padded; `prompt_mask` [K, P] marks the real ones)."""

    def __init__(self, arch: DetectorArch, dim: int, prompt_embeddings: torch.Tensor | None = None,
                 prompt_mask: torch.Tensor | None = None) -> None:
        super().__init__(arch)
        self.dim = dim
        self.head = OpenHead(arch.width, dim)
        if prompt_embeddings is None:
            prompt_embeddings = torch.zeros(arch.num_classes, 1, dim)
            prompt_mask = torch.ones(arch.num_classes, 1, dtype=torch.bool)
        if prompt_embeddings.shape[0] != arch.num_classes or prompt_embeddings.shape[2] != dim:
            raise ValueError(f"prompt embeddings {tuple(prompt_embeddings.shape)} for {arch.num_classes} classes "
                             f"of dimension {dim}")
        self.register_buffer("prompt_embeddings", F.normalize(prompt_embeddings.float(), dim=-1), persistent=False)
        self.register_buffer("prompt_mask", prompt_mask.bool(), persistent=False)

    def class_queries(self) -> torch.Tensor:
        """The known classes' queries [K, D]: the normalised mean of each class's phrasings (what inference uses)."""
        m = self.prompt_mask[..., None].float()
        return F.normalize((self.prompt_embeddings * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)

    def _training_queries(self) -> torch.Tensor:
        """One phrasing per class drawn at random, or the mean of all of them (a quarter of the steps)."""
        if torch.rand(()) < 0.25:
            return self.class_queries()
        pick = torch.multinomial(self.prompt_mask.float(), 1).squeeze(1)
        return self.prompt_embeddings[torch.arange(len(pick), device=pick.device), pick]

    def text_calibration(self, n: int) -> torch.Tensor:
        scale, bias = self.head.calibration()
        return torch.stack([scale, bias]).expand(n, 2)

    def forward_cached(self, c3: torch.Tensor, h16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As the closed-set detector: (class logits [B, L, K], centerness logits, side distances), the classes
        being the known ones (queries drawn per step in training, their mean phrasing in eval mode)."""
        emb, ctr, dist = self.regions_cached(c3, h16)
        queries = self._training_queries() if self.training else self.class_queries()
        return query_logits(emb, queries, self.text_calibration(len(queries))), ctr, dist

    def regions_cached(self, c3: torch.Tensor, h16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(self.fpn(self.trunk.top(c3, h16)))

    def regions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model frame -> (region embeddings [B, L, D], centerness logits [B, L], side distances [B, L, 4])."""
        return self.regions_cached(*self.trunk.stem(x))


class OpenDetectorCore(nn.Module):
    """The exported core: (frame, queries [C, D], calibration [C, 2]) -> boxes [1, L, 4] (model pixels),
    scores [1, C, L], region embeddings [1, L, D]."""

    def __init__(self, detector: OpenDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor, queries: torch.Tensor, calibration: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb, ctr, dist = self.detector.regions(x)
        boxes = decode(self.detector.points, dist)
        logits = query_logits(emb, queries, calibration)
        scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctr)[..., None])
        return boxes, scores.transpose(1, 2), emb

