from django.core.management.base import BaseCommand, CommandError

from semantic.backends import EmbeddingError, get_backend
from semantic.backends.local import LocalBackend
from semantic.management.output import QuietMixin


class Command(QuietMixin, BaseCommand):
    help = (
        "Write the local model's ONNX graph into its cache (once; later runs reuse it, and rebuild it "
        "if the cached file is damaged), so web and worker processes start without PyTorch. "
        "Nothing is downloaded: the graph is made from the installed weights."
    )

    NOT_LOCAL = "The configured backend is not the local model: nothing to prepare."
    NOT_ONNX = (
        "ONNX Runtime is not used for this model (the runtime option, onnxruntime not installed, or a model "
        "it cannot run): sentence-transformers runs it, nothing to prepare."
    )
    EXPORTED = "Exported the local model to {graph}."
    REUSED = "The local model's graph is ready: {graph}."

    def handle(self, **options):
        backend = get_backend()
        if not isinstance(backend, LocalBackend):
            self.say(self.NOT_LOCAL)
            return
        if missing := backend.missing():
            raise CommandError(missing)
        try:
            if not backend.can_use_onnx():
                self.say(self.NOT_ONNX)
                return
            graph, exported = backend.prepare()
        except EmbeddingError as error:
            raise CommandError(str(error)) from None
        self.say((self.EXPORTED if exported else self.REUSED).format(graph=graph))
