"""MoCo v2 (He et al. 2020; Chen et al. 2020): query encoder + momentum key encoder, a queue of
negative keys, InfoNCE at temperature ``t``, 2-layer MLP projection head.

With several Ray Train workers the keys of all workers are gathered before they enter the queue and
the key batch is shuffled across workers before the key encoder (shuffling BN, as in the official
code), so batch-norm statistics cannot leak which key matches which query.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from covidct_bench.models.backbones import create_backbone, replace_head


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class MoCo(nn.Module):
    def __init__(self, backbone: str, init: str = "random", weights=None, in_chans: int = 3, dim: int = 128,
                 hidden: int = 2048, queue: int = 512, momentum: float = 0.999, temperature: float = 0.2):
        super().__init__()
        self.backbone_name, self.in_chans = backbone, in_chans
        self.m, self.t, self.K = momentum, temperature, queue
        self.encoder_q = create_backbone(backbone, init, weights, in_chans=in_chans)
        feat = replace_head(self.encoder_q, 0)  # the trunk now returns pooled features
        self.projector_q = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.projector_k = copy.deepcopy(self.projector_q)
        for p in list(self.encoder_k.parameters()) + list(self.projector_k.parameters()):
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for q, k in zip(list(self.encoder_q.parameters()) + list(self.projector_q.parameters()),
                        list(self.encoder_k.parameters()) + list(self.projector_k.parameters())):
            k.mul_(self.m).add_(q.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = concat_all_gather(keys)
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(keys.shape[0], device=keys.device)) % self.K
        self.queue[:, idx] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + keys.shape[0]) % self.K

    @torch.no_grad()
    def _keys(self, im_k: torch.Tensor) -> torch.Tensor:
        if not _distributed():
            return F.normalize(self.projector_k(self.encoder_k(im_k)), dim=1)
        # shuffle BN across workers (every worker's batch has the same size: drop_last)
        world, rank, b = dist.get_world_size(), dist.get_rank(), im_k.shape[0]
        gathered = concat_all_gather(im_k)
        perm = torch.randperm(gathered.shape[0], device=im_k.device)
        dist.broadcast(perm, src=0)
        k = F.normalize(self.projector_k(self.encoder_k(gathered[perm][rank * b:(rank + 1) * b])), dim=1)
        k_all = concat_all_gather(k)
        return k_all[torch.argsort(perm)][rank * b:(rank + 1) * b]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen-feature view for the kNN / linear probe: pooled query-encoder features."""
        return self.encoder_q(x)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE logits (positive first) and targets (all zeros)."""
        q = F.normalize(self.projector_q(self.encoder_q(im_q)), dim=1)
        with torch.no_grad():
            self._momentum_update()
            k = self._keys(im_k)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone().detach().to(q.dtype)
        logits = torch.cat([l_pos, l_neg], dim=1) / self.t
        self._enqueue(k)
        return logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)

    def backbone_checkpoint(self) -> dict:
        """What ``--init cssl:PATH`` loads: the query encoder without its projection head."""
        return {"state_dict": {k: v.detach().cpu() for k, v in self.encoder_q.state_dict().items()},
                "meta": {"backbone": self.backbone_name, "in_chans": self.in_chans}}
