"""MSAD, the Multi-Sensor Alignment Dense loss, computed for every token position at once.

For two sensors' co-located images, the student's tokens at position ``i`` (CLS or patch) are
projected and L2-normalised (e1, e2 of shape (B, d) per position). As in CLIP, each image must
pick its counterpart among the batch:

    logits  = e2 @ e1.T / tau                                     (B, B)
    targets = I (hard, the default), or                           each image is its own match
              softmax(((e1 @ e1.T + e2 @ e2.T) / 2) / tau)        soft: the reference code's targets
    targets = (1 - eps) * targets + eps / B                       optional label smoothing
    loss_i  = (CE(logits, targets) + CE(logits.T, targets.T)) / 2

summed over sensor pairs and averaged over positions. All positions are computed in one batched
matrix product (P, B, d) x (P, d, B): no Python loop over tokens.

Targets: the reference code takes its soft targets from the embeddings' own intra-sensor
similarity. Once the two sensors agree (e1 = e2), those targets equal the softmax of the logits
(KL = 0) however alike the places are, so the loss asks nothing more than agreement; the only push
to tell places apart is the gradient that flows into the targets (detached, training collapsed).
Hard targets require every place to be told apart from the other places in the batch. Measured
on the demo store (docs/training.md): held-out mean-pooled cross-sensor R@1 0.267 with soft
targets and label smoothing 0.3, 0.491 with hard targets.

Normalisation and temperature: the reference code feeds unnormalised features with tau = 1.0, so
logit magnitudes follow the features' scale (exploding or vanishing softmaxes). Here embeddings
are unit vectors, so every logit is a cosine similarity in [-1, 1] divided by tau; tau = 0.1 gives
logits in [-10, 10], a softmax that can be confident yet keeps gradients for all negatives (the
range CLIP's learned temperature settles around).

The default is therefore the *InfoNCE form of MSAD*: one shared projection head, unit vectors,
tau 0.1, hard targets. The reference code's form is the ``reference`` preset of
:class:`~msc_france.xstars.config.MSADConfig`: a shared head followed by one head per argument of
the loss (``e1`` through one, ``e2`` through the other, CLIP's image and text projections), no
normalisation, width 1024, tau 1, soft targets, label smoothing 0.3, alpha 0.1, with the
reference code's bugs fixed (the loss keeps its gradient and the heads are trained). The reference
writes its soft targets as ``softmax((e1 e1^T + e2 e2^T) / 2 * tau)``; here the similarity is
divided by tau, the same at the preset's tau of 1.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Targets = Literal["hard", "soft"]
"""MSAD targets: ``hard`` (each image's counterpart) or ``soft`` (the reference code's)."""


class ProjectionHead(nn.Module):
    """Linear, GELU, linear, dropout, residual, LayerNorm (the X-STARS projection block)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project tokens ``x`` (..., in_dim) to (..., out_dim)."""
        p = self.proj(x)
        return self.norm(p + self.drop(self.fc(F.gelu(p))))


Positions = Literal["all", "cls", "mean"]
"""Which token positions MSAD aligns: every token (dense, the default), or one global vector per
image (the CLS token, or the mean patch token): a global InfoNCE, the baseline that says whether
*dense* matters.
"""


def positions(tokens: torch.Tensor, which: Positions) -> torch.Tensor:
    """(B, 1 + P, D) tokens -> the (B, P', D) positions MSAD aligns (see :data:`Positions`)."""
    if which == "all":
        return tokens
    if which == "cls":
        return tokens[:, :1]
    if which == "mean":
        return tokens[:, 1:].mean(dim=1, keepdim=True)
    raise ValueError(f"MSAD tokens must be 'all', 'cls' or 'mean', not {which!r}")


Heads = Literal["shared", "per-sensor", "per-argument"]
"""MSAD head layouts: see :class:`MSADHeads`."""


class MSADHeads(nn.Module):
    """The MSAD projection: one head shared by every sensor, optionally followed by one per sensor
    (``per-sensor``) or one per argument of the loss (``per-argument``, the reference code's).

    Shared heads are the default. With a head per sensor, the loss can be minimised by those heads
    alone (each maps its sensor's features onto a common space) while the backbone stays as
    sensor-specific as DINO's: measured on the demo store, held-out retrieval from the backbone's
    mean-pooled tokens was 0.010 with per-sensor heads and 0.149 with shared ones, while the
    projections themselves retrieved at 0.95 (docs/training.md). All heads are trained and saved.

    Args:
        dim: backbone token width.
        sensors: sensors that get a head of their own (``per-sensor`` only).
        proj_dim: projection width.
        dropout: dropout of every head.
        per_sensor: ``True`` for ``per-sensor`` heads (kept for older callers; see ``layout``).
        layout: the head layout; overrides ``per_sensor`` when given.
        normalize: L2-normalise the embeddings (the InfoNCE form); the reference form does not.
    """

    def __init__(self, dim: int, sensors: list[str], proj_dim: int = 256, dropout: float = 0.2,
                 per_sensor: bool = False, layout: Heads | None = None, normalize: bool = True) -> None:
        super().__init__()
        self.layout: Heads = layout or ("per-sensor" if per_sensor else "shared")
        self.normalize = normalize
        self.shared = ProjectionHead(dim, proj_dim, dropout)
        self.per_sensor = nn.ModuleDict(
            {s: ProjectionHead(proj_dim, proj_dim, dropout) for s in sensors}
            if self.layout == "per-sensor" else {})
        self.per_argument = nn.ModuleList(
            [ProjectionHead(proj_dim, proj_dim, dropout) for _ in range(2)] if self.layout == "per-argument" else [])
        self.has_per_sensor = self.layout == "per-sensor"

    @property
    def n_arguments(self) -> int:
        """Embeddings per input: 2 with per-argument heads (one for each side of a pair), else 1."""
        return 2 if self.layout == "per-argument" else 1

    def add_sensor(self, name: str) -> None:
        """A head for a new sensor (per-sensor heads only)."""
        if self.has_per_sensor and name not in self.per_sensor:
            d = self.shared.proj.out_features
            self.per_sensor[name] = ProjectionHead(d, d, self.shared.drop.p).to(self.shared.proj.weight.device)

    def forward(self, tokens: torch.Tensor, sensor: str, argument: int = 0) -> torch.Tensor:
        """(B, P, D) tokens -> (B, P, proj_dim) embeddings (unit vectors unless ``normalize`` is off);
        ``argument`` picks the side of the pair with per-argument heads.
        """
        z = self.shared(tokens)
        if self.has_per_sensor:
            z = self.per_sensor[sensor](z)
        elif self.layout == "per-argument":
            z = self.per_argument[argument](z)
        return F.normalize(z, dim=-1) if self.normalize else z

    def arguments(self, tokens: torch.Tensor, sensor: str) -> torch.Tensor:
        """(B, P, D) tokens -> (B, A, P, proj_dim): the embedding for each argument of the loss
        (A = :attr:`n_arguments`), the shared head computed once.
        """
        z = self.shared(tokens)
        if self.has_per_sensor:
            outs = [self.per_sensor[sensor](z)]
        elif self.layout == "per-argument":
            outs = [h(z) for h in self.per_argument]
        else:
            outs = [z]
        out = torch.stack(outs, dim=1)
        return F.normalize(out, dim=-1) if self.normalize else out


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean(dim=-1)


def _check(targets: str) -> None:
    if targets not in ("hard", "soft"):
        raise ValueError(f"MSAD targets must be 'hard' or 'soft', not {targets!r}")


def _pair(a: torch.Tensor, b: torch.Tensor, tau: float, smoothing: float,
          self_sim: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """MSAD of one pair from position-major embeddings (P, B, d); soft targets when the two
    sensors' intra-batch similarities ``self_sim`` are given, hard targets otherwise.
    """
    logits = torch.bmm(b, a.transpose(1, 2)) / tau  # (P, B, B)
    p, n = logits.shape[:2]
    if self_sim is None:  # hard: the matching index, with torch's fused (smoothed) cross-entropy
        labels = torch.arange(n, device=logits.device).repeat(p)
        return (F.cross_entropy(logits.reshape(p * n, n), labels, label_smoothing=smoothing)
                + F.cross_entropy(logits.transpose(1, 2).reshape(p * n, n), labels, label_smoothing=smoothing)) / 2
    targets = F.softmax((self_sim[0] + self_sim[1]) / (2 * tau), dim=-1)
    targets = (1 - smoothing) * targets + smoothing / n
    loss = (_soft_ce(logits, targets) + _soft_ce(logits.transpose(1, 2), targets.transpose(1, 2))) / 2
    return loss.mean()


def msad_pair(e1: torch.Tensor, e2: torch.Tensor, tau: float = 0.1, smoothing: float = 0.0,
              targets: Targets = "hard") -> torch.Tensor:
    """MSAD between two sensors, vectorised over positions.

    Args:
        e1: (B, P, d) unit embeddings from one sensor; B images, P token positions.
        e2: (B, P, d) unit embeddings of the same ground from the other sensor.
        tau: temperature.
        smoothing: label smoothing.
        targets: ``hard`` or ``soft`` (see the module docstring).

    Returns:
        The loss averaged over positions (a scalar with gradient).
    """
    return msad_loss({"1": e1, "2": e2}, tau, smoothing, targets=targets)


def msad_loss(embeddings: dict[str, torch.Tensor], tau: float = 0.1, smoothing: float = 0.0,
              pairs: list[tuple[str, str]] | None = None, targets: Targets = "hard",
              second: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Sum of :func:`msad_pair` over sensor pairs (default: every unordered pair).

    With soft targets, each sensor's intra-batch similarity is computed once and shared by all its
    pairs.

    Args:
        embeddings: (B, P, d) embeddings per sensor, as the first argument (``e1``) of a pair.
        tau: temperature.
        smoothing: label smoothing.
        pairs: (first, second) sensor pairs.
        targets: ``hard`` or ``soft``.
        second: with per-argument heads, each sensor's embeddings as the second argument (``e2``);
            None uses ``embeddings`` for both sides.
    """
    _check(targets)
    names = list(embeddings)
    pairs = pairs or list(itertools.combinations(names, 2))
    if not pairs:
        raise ValueError("MSAD needs at least two sensors")
    src2 = embeddings if second is None else second
    pm1 = {s: embeddings[s].transpose(0, 1) for s in {a for a, _ in pairs}}
    pm2 = {s: src2[s].transpose(0, 1) for s in {b for _, b in pairs}}
    if targets == "hard":
        return sum(_pair(pm1[a], pm2[b], tau, smoothing, None) for a, b in pairs)  # type: ignore[return-value]
    sim1 = {s: torch.bmm(x, x.transpose(1, 2)) for s, x in pm1.items()}
    shared = sim1 if second is None else {}  # one embedding per sensor: its similarity serves both sides
    sim2 = {s: shared[s] if s in shared else torch.bmm(x, x.transpose(1, 2)) for s, x in pm2.items()}
    return sum(_pair(pm1[a], pm2[b], tau, smoothing, (sim1[a], sim2[b])) for a, b in pairs)  # type: ignore[return-value]


def msad_pair_loop(e1: torch.Tensor, e2: torch.Tensor, tau: float = 0.1, smoothing: float = 0.0,
                   targets: Targets = "hard") -> torch.Tensor:
    """The same loss as :func:`msad_pair`, one token position at a time (the reference form).

    Kept as the correctness reference for tests and the baseline for benchmarks. Unlike the
    authors' ``torch.mean(torch.tensor(list))``, it stacks tensors and keeps the gradient.
    """
    losses = []
    for i in range(e1.shape[1]):
        a, b = e1[:, i], e2[:, i]
        logits = b @ a.T / tau
        if targets == "hard":
            t = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        else:
            t = F.softmax(((a @ a.T + b @ b.T) / 2) / tau, dim=-1)
        t = (1 - smoothing) * t + smoothing / t.shape[-1]
        l1 = -(t * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        l2 = -(t.T * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()
        losses.append((l1 + l2) / 2)
    return torch.stack(losses).mean()
