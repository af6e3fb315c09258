"""Open-vocabulary object detection for evaluation: OWLv2 / OWL-ViT through transformers, plus NMS.

:func:`load_detector` loads ``Owlv2ForObjectDetection`` (or ``OwlViTForObjectDetection``, chosen by the
folder's ``config.json``) and its processor from a local folder or a hub id already in the local cache;
offline without the weights it is one clear error. :meth:`OwlDetector.detect` asks for a list of class
names and returns, per class, the boxes above a threshold after non-maximum suppression, most confident
first (what GenEval's rules read). Any object with the same ``detect`` method can stand in (tests use a
deterministic fake).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import BestshotError

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
QUERY = "a photo of a {}"


@dataclass(frozen=True)
class Detection:
    """A detected box in pixels ``(x0, y0, x1, y1)`` and its confidence."""

    box: tuple[float, float, float, float]
    score: float


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select(dets: list[Detection], threshold: float, nms: float = 0.5, max_objects: int = 16) -> list[Detection]:
    """GenEval's selection: above ``threshold``, most confident first, at most ``max_objects``, then greedy
    NMS dropping boxes overlapping a kept one by IoU >= ``nms`` (``nms=1`` keeps all)."""
    order = sorted((d for d in dets if d.score > threshold), key=lambda d: -d.score)[:max_objects]
    kept: list[Detection] = []
    while order:
        best = order.pop(0)
        kept.append(best)
        order = [d for d in order if nms >= 1 or iou(best.box, d.box) < nms]
    return kept


class OwlDetector:
    """OWLv2 / OWL-ViT: every predicted box goes to its most likely query class (as transformers'
    post-processing does), with that class's sigmoid score."""

    def __init__(self, model: Any, processor: Any, name: str, device: str = "cpu") -> None:
        self.model, self.processor, self.name, self.device = model, processor, name, device
        self.pads_square = getattr(model.config, "model_type", "") == "owlv2"  # OWLv2 pads to a square

    def raw(self, image: Image.Image, classes: list[str]) -> dict[str, list[Detection]]:
        """Every box of the image, each under its best class (no threshold)."""
        import torch

        image = image.convert("RGB")
        queries = [[QUERY.format(c) for c in classes]]
        inputs = self.processor(text=queries, images=image, return_tensors="pt", truncation=True)
        with torch.no_grad():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        probs = out.logits[0].sigmoid().float().cpu()  # (boxes, classes)
        boxes = out.pred_boxes[0].float().cpu()  # (boxes, 4): centre x, centre y, w, h in [0, 1]
        w, h = image.size
        sx, sy = (max(w, h), max(w, h)) if self.pads_square else (w, h)
        scores, labels = probs.max(-1)
        found: dict[str, list[Detection]] = {c: [] for c in classes}
        for (cx, cy, bw, bh), s, k in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            box = (
                max(0.0, (cx - bw / 2) * sx),
                max(0.0, (cy - bh / 2) * sy),
                min(float(w), (cx + bw / 2) * sx),
                min(float(h), (cy + bh / 2) * sy),
            )
            if box[2] > box[0] and box[3] > box[1]:
                found[classes[k]].append(Detection(box, float(s)))
        return found

    def detect(
        self, image: Image.Image, classes: list[str], threshold: float, nms: float = 0.5, max_objects: int = 16
    ) -> dict[str, list[Detection]]:
        """Per class: boxes above ``threshold`` after NMS, most confident first."""
        return {c: select(d, threshold, nms, max_objects) for c, d in self.raw(image, classes).items()}


def load_detector(model_id: str = DEFAULT_DETECTOR, device: str | None = None) -> OwlDetector:
    """OWLv2 / OWL-ViT from a local folder or a hub id in the local cache (never the network when offline)."""
    import torch
    from transformers import AutoConfig, AutoProcessor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        config = AutoConfig.from_pretrained(model_id, local_files_only=True)
    except (OSError, ValueError) as err:
        raise BestshotError(
            f"detector {model_id!r} is not available offline ({str(err).splitlines()[0][:120]}) — download it "
            f"first (huggingface-cli download {DEFAULT_DETECTOR}) or pass --detector with a local folder"
        ) from None
    if config.model_type == "owlv2":
        from transformers import Owlv2ForObjectDetection as Model
    elif config.model_type == "owlvit":
        from transformers import OwlViTForObjectDetection as Model
    else:
        raise BestshotError(f"detector {model_id!r} is a {config.model_type!r} model — give an OWLv2 or OWL-ViT one")
    try:
        processor = AutoProcessor.from_pretrained(model_id, local_files_only=True)
        model = Model.from_pretrained(model_id, local_files_only=True).to(device).eval()
    except (OSError, ValueError) as err:
        raise BestshotError(f"cannot load detector {model_id!r}: {str(err).splitlines()[0][:160]}") from None
    return OwlDetector(model, processor, model_id, device)
