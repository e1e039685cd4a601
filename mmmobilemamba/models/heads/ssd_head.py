"""SSDLite head that can predict under mmdet 3.3."""
from mmdet.models.dense_heads import SSDHead
from mmdet.registry import MODELS

__all__ = ['SSDLiteHead']


@MODELS.register_module()
class SSDLiteHead(SSDHead):
    """mmdet's :class:`~mmdet.models.dense_heads.SSDHead`, with the same arguments.

    mmdet 3.3's ``BaseDenseHead._predict_by_feat_single`` reads ``self.loss_cls`` (for
    ``custom_cls_channels``), but ``SSDHead`` skips ``AnchorHead.__init__`` and never sets it, so
    every SSD prediction raises ``AttributeError``. SSD computes its classification loss in
    ``loss_by_feat`` without a ``loss_cls`` module; ``None`` is the truthful value.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not hasattr(self, 'loss_cls'):
            self.loss_cls = None
