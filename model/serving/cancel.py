"""A cancel that coglet turns into an exception without a message gets one.

coglet 0.23.1 cancels an async run() by cancelling its task. But from the moment its worker starts a
prediction until it has handed run()'s coroutine to the event loop, it treats the prediction as a
sync one and raises its CancelationException in its own thread instead (PyThreadState_SetAsyncExc).
That exception has no message, and coglet's error is built from it: the prediction ended `failed`
with an error that says nothing ("Input validation error: " when it fires while coglet reads the
input, "...CancelationException: " elsewhere). With a message the error says what happened; and
where coglet decides by the error's text (its wait for run()'s result maps a text containing
"cancelled" to `canceled`), the prediction ends `canceled`. docs/cancel.md has the whole story.
"""

from __future__ import annotations

MESSAGE = "the prediction was cancelled while coglet was starting it, before run() began"


def _describe(self: BaseException) -> str:
    return BaseException.__str__(self) or MESSAGE


def describe_cancel(kind: type[BaseException]) -> None:
    """Give `kind` (coglet's CancelationException, a class coglet made at runtime, which accepts
    new attributes) a message when it is raised with none."""
    kind.__str__ = _describe  # type: ignore[method-assign]
