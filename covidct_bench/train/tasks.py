"""Task objects: what differs between classifier, multi-task, segmenter and CSSL (solo-learn style).

The loop (``train.loop``) is the same for all of them; a task says how to turn a cached sample into
tensors, which model to build, the loss of a batch, what to predict per image and how to score a
split. Adding a task is one ``@register_task`` subclass of ``Task``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from covidct_bench.data.transforms import TransformConfig, eval_transforms, finish_steps, moco_transforms, train_transforms
from covidct_bench.errors import BenchError
from covidct_bench.metrics import (choose_threshold, classification_metrics, dice_iou, knn_accuracy, linear_probe)
from covidct_bench.models.backbones import check_input_size, create_backbone
from covidct_bench.models.moco import MoCo
from covidct_bench.models.multitask import MultiTaskNet
from covidct_bench.models.unet import ResUNet
from covidct_bench.registry import Registry
from covidct_bench.train.config import TrainConfig

TASKS: Registry[type["Task"]] = Registry("task")


def register_task(cls: type["Task"]) -> type["Task"]:
    TASKS.register(cls.name)(cls)
    return cls


def get_task(cfg: TrainConfig) -> "Task":
    return TASKS.get(cfg.task)(cfg)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice, the usual lesion / lung segmentation loss."""
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)


class Task:
    """Base class: a binary COVID classifier's data path; subclasses change the parts that differ."""

    name: ClassVar[str]
    eval_splits: ClassVar[tuple[str, ...]] = ("val", "test")
    image_channels: ClassVar[int] = 3

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.size = int(cfg.image_size)
        a = cfg.augment
        tc = TransformConfig(size=self.size, crop_scale=a.crop_scale, hflip=a.hflip, brightness=a.brightness,
                             contrast=a.contrast, channels=self.image_channels)
        self._train_tf, self._eval_tf = train_transforms(tc), eval_transforms(tc)
        # what a black pixel becomes after the eval transforms (normalisation): the fill of masked-out areas
        self._black = v2.Compose(finish_steps(tc))(tv_tensors.Image(torch.zeros(1, 1, 1, dtype=torch.uint8)))[None].as_subclass(torch.Tensor)

    # -- checks before anything runs ------------------------------------------------------------
    def validate(self, df: pd.DataFrame) -> None:
        check_input_size(self.cfg.backbone, self.size, self.cfg.in_chans)
        if self.cfg.mask_mode != "none" and ("lung_mask_path" not in df or df["lung_mask_path"].isna().all()):
            raise BenchError(f"--mask-mode {self.cfg.mask_mode}: the manifest of {self.cfg.dataset!r} has no lung masks "
                             f"(lung mask set {self.cfg.lung_masks!r}); make them with "
                             f"`covidct-bench data lung-masks {self.cfg.dataset}` and pass --lung-masks classical")
        if self.cfg.mask_mode != "none" and df["lung_mask_path"].isna().any():  # a mask channel only some images have is a shortcut
            missing = df.loc[df["lung_mask_path"].isna(), "image_id"]
            raise BenchError(f"--mask-mode {self.cfg.mask_mode}: {len(missing)} image(s) of {self.cfg.dataset!r} have no lung "
                             f"mask in set {self.cfg.lung_masks!r} (first: {missing.iloc[0]}); make a set for all of them")
        self.check_splits(df)

    def check_splits(self, df: pd.DataFrame) -> None:
        for split in ("train", *self.eval_splits):
            if not (df["split"] == split).any():
                raise BenchError(f"--dataset {self.cfg.dataset}: no images in split {split!r}")

    # -- data -----------------------------------------------------------------------------------
    def sample(self, s: dict, train: bool) -> dict:
        s = (self._train_tf if train else self._eval_tf)(s)
        return {"image": s["image"].as_subclass(torch.Tensor), "lung_mask": s["lung_mask"].as_subclass(torch.Tensor).float(),
                "lesion_mask": s["lesion_mask"].as_subclass(torch.Tensor).float(),
                "has_lesion_mask": s["has_lesion_mask"], "label": s["label"], "index": s["index"]}

    def inputs(self, batch: dict) -> torch.Tensor:
        x = batch["image"]
        if self.cfg.mask_mode == "channel":
            x = torch.cat([x, batch["lung_mask"]], dim=1)
        elif self.cfg.mask_mode in ("multiply", "exclude"):  # black (not mean grey) outside what is kept
            keep = batch["lung_mask"] > 0.5 if self.cfg.mask_mode == "multiply" else batch["lung_mask"] <= 0.5
            x = torch.where(keep, x, self._black.to(x.device, x.dtype))
        return x

    # -- model + optimisation ------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return create_backbone(self.cfg.backbone, self.cfg.init, self.cfg.weights, in_chans=self.cfg.in_chans)

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logit = model(self.inputs(batch)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logit.float(), batch["label"].float())
        return loss, {}

    # -- evaluation ------------------------------------------------------------------------------
    def predict(self, model: nn.Module, batch: dict) -> dict[str, np.ndarray]:
        logit = model(self.inputs(batch)).squeeze(1)
        return {"score": torch.sigmoid(logit.float()).cpu().numpy()}

    def evaluate(self, out: dict[str, dict[str, np.ndarray]], index: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
        """Metrics per split (threshold chosen on val, applied to test) + one prediction row per image."""
        val = out["val"]
        thr = choose_threshold(index["label"].to_numpy()[val["index"]], val["score"], self.cfg.threshold_rule)
        metrics, frames = {}, []
        for split, o in out.items():
            y = index["label"].to_numpy()[o["index"]]
            for k, v in classification_metrics(y, o["score"], thr).items():
                metrics[f"{split}/{k}"] = v
            frames.append(self.prediction_rows(split, o, index, y_pred=(o["score"] >= thr).astype(np.int8)))
        return metrics, pd.concat(frames, ignore_index=True)

    @staticmethod
    def prediction_rows(split: str, o: dict, index: pd.DataFrame, **extra) -> pd.DataFrame:
        rows = index.iloc[o["index"]]
        df = pd.DataFrame({"image_id": rows["image_id"].astype(str).to_numpy(), "patient_id": rows["patient_id"].astype(str).to_numpy(),
                           "split": split, "y_true": rows["label"].to_numpy().astype(np.int8),
                           "score": np.asarray(o.get("score"), dtype=np.float32)})
        for k, v in {**{k: v for k, v in o.items() if k not in ("index", "score", "features")}, **extra}.items():
            df[k] = v
        return df


@register_task
class Classify(Task):
    name = "classify"


@register_task
class MultiTask(Task):
    """Classification + lesion segmentation (ASPP head); the predicted lesion mask feeds the classifier."""

    name = "multitask"

    def validate(self, df: pd.DataFrame) -> None:
        super().validate(df)
        train = df[df["split"] == "train"]
        if "lesion_mask_path" not in df or train["lesion_mask_path"].isna().all():
            raise BenchError(f"--task multitask: the training images of {self.cfg.dataset!r} have no lesion masks "
                             "(lesion_mask_path); they are needed to train the lesion head")

    def build_model(self) -> nn.Module:
        return MultiTaskNet(self.cfg.backbone, self.cfg.init, self.cfg.weights, in_chans=self.cfg.in_chans,
                            aspp_rates=tuple(self.cfg.aspp_rates))

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        out = model(self.inputs(batch))
        cls = F.binary_cross_entropy_with_logits(out["logit"].float(), batch["label"].float())
        has = batch["has_lesion_mask"].bool()
        if has.any():
            seg = seg_loss(out["lesion_logits"][has].float(), batch["lesion_mask"][has])
        else:  # lesion masks are optional per image: no term, but keep the graph connected for DDP
            seg = out["lesion_logits"].float().sum() * 0.0
        return self.cfg.cls_weight * cls + self.cfg.seg_weight * seg, {"cls_loss": cls.detach(), "seg_loss": seg.detach()}

    def predict(self, model: nn.Module, batch: dict) -> dict[str, np.ndarray]:
        out = model(self.inputs(batch))
        pred = (out["lesion_logits"].float() > 0).squeeze(1).cpu().numpy()
        dice, _ = dice_iou(pred, batch["lesion_mask"].squeeze(1).cpu().numpy() > 0.5)
        dice = np.where(batch["has_lesion_mask"].cpu().numpy(), dice, np.nan)
        return {"score": torch.sigmoid(out["logit"].float()).cpu().numpy(), "lesion_dice": dice}

    def evaluate(self, out, index):
        metrics, preds = super().evaluate(out, index)
        for split, o in out.items():
            d = o["lesion_dice"][~np.isnan(o["lesion_dice"])]
            metrics[f"{split}/lesion_dice"] = float(d.mean()) if len(d) else float("nan")
        return metrics, preds


@register_task
class Segment(Task):
    """Residual U-Net lung segmenter: grey image in, lung mask out; Dice/IoU against the target set
    (and, when the manifest has its own lung masks, e.g. the phantoms' true ones, against those)."""

    name = "segment"
    image_channels = 1

    def validate(self, df: pd.DataFrame) -> None:
        if "lung_mask_path" not in df or df.loc[df["split"] == "train", "lung_mask_path"].isna().all():
            raise BenchError(f"--task segment: the training images of {self.cfg.dataset!r} have no lung masks "
                             f"(set {self.cfg.lung_masks!r}); make them with `covidct-bench data lung-masks "
                             f"{self.cfg.dataset}` and pass --lung-masks classical")
        self.check_splits(df)

    ref_cache: str | None = None  # set by the loop: a cache of the manifest's own lung masks, same rows

    def sample(self, s: dict, train: bool) -> dict:
        out = super().sample(s, train)
        if not train and self.ref_cache is not None:
            if not hasattr(self, "_ref"):
                from covidct_bench.data.cache import Cache

                ref = Cache(self.ref_cache)
                self._ref = (ref.arrays().get("lung_mask"), ref.index["has_lung_mask"].to_numpy())
            arr, has = self._ref
            if arr is not None:
                out["ref_mask"] = torch.from_numpy(np.asarray(arr[s["index"]]))
                out["has_ref_mask"] = bool(has[s["index"]])
        return out

    def build_model(self) -> nn.Module:
        return ResUNet(in_chans=1, base=self.cfg.unet_base)

    def loss(self, model, batch):
        return seg_loss(model(batch["image"]).float(), batch["lung_mask"]), {}

    def predict(self, model, batch):
        pred = (model(batch["image"]).float() > 0).squeeze(1).cpu().numpy()
        dice, iou = dice_iou(pred, batch["lung_mask"].squeeze(1).cpu().numpy() > 0.5)
        out = {"score": pred.reshape(len(pred), -1).mean(1), "dice": dice, "iou": iou}
        if "ref_mask" in batch:
            tdice, tiou = dice_iou(pred, batch["ref_mask"].cpu().numpy() > 0)
            has = batch["has_ref_mask"].cpu().numpy()
            out.update(true_dice=np.where(has, tdice, np.nan), true_iou=np.where(has, tiou, np.nan))
        return out

    def evaluate(self, out, index):
        metrics, frames = {}, []
        for split, o in out.items():
            for k in ("dice", "iou", "true_dice", "true_iou"):
                if k in o:
                    v = o[k][~np.isnan(o[k])]
                    metrics[f"{split}/{k}"] = float(v.mean()) if len(v) else float("nan")
            frames.append(self.prediction_rows(split, o, index))
        return metrics, pd.concat(frames, ignore_index=True)


@register_task
class Cssl(Task):
    """MoCo v2 pretraining on the training images (labels unused); scored by kNN and a linear probe
    on the frozen query-encoder features (train split as the bank / probe training set)."""

    name = "cssl"
    eval_splits = ("train", "val", "test")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self._view = moco_transforms(self.size, cfg.moco.augment)

    def sample(self, s: dict, train: bool) -> dict:
        if not train:
            return {"image": self._eval_tf(s["image"]).as_subclass(torch.Tensor), "label": s["label"], "index": s["index"]}
        return {"image_q": self._view(s["image"]).as_subclass(torch.Tensor),
                "image_k": self._view(s["image"]).as_subclass(torch.Tensor), "label": s["label"], "index": s["index"]}

    def build_model(self) -> nn.Module:
        m = self.cfg.moco
        return MoCo(self.cfg.backbone, self.cfg.init, self.cfg.weights, dim=m.dim, hidden=m.hidden, queue=m.queue,
                    momentum=m.momentum, temperature=m.temperature)

    def loss(self, model, batch):
        logits, target = model(batch["image_q"], batch["image_k"])
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.argmax(1) == target).float().mean()
        return loss, {"instance_acc": acc.detach()}

    def predict(self, model, batch):
        f = F.normalize(model.features(batch["image"]).float(), dim=1)
        return {"features": f.cpu().numpy()}

    def evaluate(self, out, index):
        label = index["label"].to_numpy()
        tr = out["train"]
        metrics, frames = {}, []
        for split in ("val", "test"):
            o = out[split]
            y = label[o["index"]]
            metrics[f"{split}/knn_acc"] = knn_accuracy(tr["features"], label[tr["index"]], o["features"], y, self.cfg.moco.knn_k)
            acc, prob = linear_probe(tr["features"], label[tr["index"]], o["features"], y, self.cfg.seed)
            metrics[f"{split}/linear_acc"] = acc
            frames.append(self.prediction_rows(split, {"index": o["index"], "score": prob}, index))
        return metrics, pd.concat(frames, ignore_index=True)
