"""FedRep: shared body, personal heads."""

from flwr.app import Array, ArrayRecord

from strategies.aggregate import orthonormal_columns
from strategies.base import CohortFedAvg


class FedRep(CohortFedAvg):
    """FedRep (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021).

    Only the body (``body.*``) is sent and averaged. Client side: keep a personal head
    in client state, train it for ``head-epochs`` with the body frozen (or solve it
    exactly), then the body for ``body-epochs`` with the head frozen, and reply with the
    body alone. With ``body-qr`` the averaged linear body B is re-orthonormalised (QR),
    as in the paper's linear experiment.
    """

    node_sums = True  # aggregate_train only re-orthonormalises the average

    def shares(self, name: str) -> bool:
        return name.startswith("body.")

    def initial_arrays(self, model):
        return self._qr(super().initial_arrays(model))

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        return (self._qr(arrays) if arrays is not None else None), metrics

    def _qr(self, arrays: ArrayRecord) -> ArrayRecord:
        if not self.config.body_qr:
            return arrays
        weight = arrays["body.weight"].numpy()  # Bᵀ: rank × dim
        q = orthonormal_columns(weight.T.astype("float64")).T.astype(weight.dtype)
        return ArrayRecord({**{k: v for k, v in arrays.items()}, "body.weight": Array(q)})
