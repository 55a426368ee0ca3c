"""NucleiEvaluator: the evaluator of training, scoring a model's masks as tools/evaluate.py does."""

import itertools

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from ..data.datasets import category_ids
from ..errors import UserInputError
from .coco_files import fill_missing_areas
from .metrics import check_matching_thresholds, check_score_threshold
from .report import format_summary, save_evaluation
from .scoring import COCO_AP_NAMES, evaluate_coco_predictions


class NucleiEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator that also scores the masks for nuclei, in one pass.

    COCOEvaluator gathers the predictions of all processes, encodes every mask once as COCO RLE,
    writes coco_instances_results.json and computes box AP. The masks are then scored by
    :func:`evaluate_coco_predictions`, the function behind tools/evaluate.py, with one COCOeval
    whose maxDets is ``max_dets`` (COCO's 100 would truncate crowded images): its AP is reported
    both as detectron2's usual "segm" results and in the nuclei summary, beside box AP, foreground
    IoU/Dice, DSB score, AJI, PQ and StarDist's matching table (``f1@0.5``, ...). Results: ``{"bbox", "segm", "nuclei"}`` and
    ``"nuclei/<image type>"`` per type; with ``output_dir``, nuclei_metrics.json and
    nuclei_per_image.csv are written there.

    A model that predicts boxes only (RetinaNet: its Instances have no ``pred_masks``, whatever
    its config says) gets ``{"bbox", "nuclei"}``, the nuclei summary holding box AP alone, and
    nuclei_metrics.json says why the mask metrics are absent.
    """

    @configurable
    def __init__(
        self, dataset_name, output_dir=None, *, score_threshold, max_dets, matching_thresholds,
        distributed=True,
    ):
        """
        Args:
            dataset_name (str): a registered dataset whose metadata has ``json_file`` (COCO).
            output_dir (str or None): where to write the results and metrics files.
            score_threshold (float): predictions scoring at least this make the instance maps.
            max_dets (int): COCO maxDets for box and mask AP.
            matching_thresholds (sequence of float): IoU thresholds, each in (0, 1), of the
                matching table.
            distributed (bool): gather the predictions of all processes before evaluating.
        """
        if MetadataCatalog.get(dataset_name).get("json_file") is None:
            raise UserInputError(
                f"NucleiEvaluator needs dataset '{dataset_name}' in COCO format, but its metadata "
                "has no json_file. Register it with maskrcnnpp.data.register_nuclei_coco."
            )
        super().__init__(dataset_name, tasks=("bbox",), distributed=distributed,
                         output_dir=output_dir, max_dets_per_image=max_dets)
        fill_missing_areas(self._coco_api)  # COCOeval reads them; COCO files may lack them
        if not self._metadata.get("thing_dataset_id_to_contiguous_id"):
            # set by load_coco_json when the dataset is loaded; the same mapping if it is not
            self._metadata.thing_dataset_id_to_contiguous_id = {
                category_id: index for index, category_id in enumerate(category_ids(dataset_name))
            }
        self._score_threshold = check_score_threshold(score_threshold, "TEST.NUCLEI.SCORE_THRESHOLD")
        self._max_dets = max_dets
        self._matching_thresholds = check_matching_thresholds(matching_thresholds)

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        return {
            "dataset_name": dataset_name,
            "output_dir": output_dir,
            "score_threshold": cfg.TEST.NUCLEI.SCORE_THRESHOLD,
            "max_dets": cfg.TEST.NUCLEI.MAX_DETS,
            "matching_thresholds": cfg.TEST.NUCLEI.MATCHING_THRESHOLDS,
        }

    def reset(self):
        super().reset()
        self._predicts_masks = False

    def process(self, inputs, outputs):
        super().process(inputs, outputs)
        self._predicts_masks |= any(output["instances"].has("pred_masks")
                                    for output in outputs if "instances" in output)

    def evaluate(self, img_ids=None):
        if self._distributed:  # every process takes part, as in COCOEvaluator.evaluate
            self._predicts_masks = any(comm.all_gather(self._predicts_masks))
        return super().evaluate(img_ids)

    def _eval_predictions(self, predictions, img_ids=None):
        super()._eval_predictions(predictions, img_ids)  # maps category ids; writes; box AP
        img_ids = img_ids or [prediction["image_id"] for prediction in predictions]
        box_ap = {f"box_{name}": self._results["bbox"][name] for name in COCO_AP_NAMES}
        if not self._predicts_masks:
            summary = {**box_ap, "num_images": len(set(img_ids)), "max_dets": self._max_dets}
            rows = []
        else:
            evaluation = evaluate_coco_predictions(
                self._coco_api,
                list(itertools.chain(*(prediction["instances"] for prediction in predictions))),
                self._score_threshold,
                self._max_dets,
                img_ids,
                self._matching_thresholds,
            )
            self._results["segm"] = self._derive_coco_results(
                evaluation.coco_eval, "segm", class_names=self._metadata.get("thing_classes")
            )
            summary, rows = {**box_ap, **evaluation.summary}, evaluation.rows
        by_type = summary.get("by_type", {})
        self._results["nuclei"] = {key: value for key, value in summary.items() if key != "by_type"}
        for kind, metrics in by_type.items():
            self._results[f"nuclei/{kind}"] = metrics
        self._logger.info("\n" + format_summary(summary))
        if self._output_dir:
            save_evaluation(summary, rows, self._output_dir)
