"""Pixels out of a Krita document, and the result back in.

Out: the active layer (as it shows, masks applied) or the merged image,
inside the selection's bounding box or over the whole canvas, in the layer's
own colour space and depth (see :mod:`.pixels`).

In: always a *new* paint layer, filled before it is added, so that adding it
is one undo step and the user's layers are never written to —
``Node.setPixelData`` is not undoable. Either in a new document of the
result's size, or in the source document, whose canvas is scaled first (one
more undo step) and only once the result is there.

Every function takes the Krita objects it works on; nothing here reads the
active document behind the caller's back.
"""

from typing import Any, NamedTuple, Optional

from . import pixels, region
from .pixels import PixelLayout
from .proto import Image
from .settings import SOURCE_MERGED

#: Node types whose pixels are not an image of their own.
MASK_TYPES = frozenset(
    {"transparencymask", "filtermask", "transformmask", "selectionmask", "colorizemask"}
)

#: The profile given to documents converted for Tessera.
CONVERSION_PROFILE = "sRGB-elle-V2-srgbtrc.icc"


class UserError(Exception):
    """Something the user can fix; the message says what."""


class Source(NamedTuple):
    """What was sent: where it came from, and the wire image."""

    document: Any
    #: The layer read, or ``None`` for the merged image.
    node: Any
    rect: region.Rect
    layout: PixelLayout
    image: Image
    #: The colour space, to give the result the same one.
    color_model: str
    color_depth: str
    color_profile: str
    #: A short name for the result layer.
    label: str


def selection_rect(document: Any) -> Optional[region.Rect]:
    selection = document.selection()
    if selection is None:
        return None
    rect = region.Rect(selection.x(), selection.y(), selection.width(), selection.height())
    return None if rect.empty else rect


def read_source(
    document: Any, node: Any = None, source: str = "layer", whole: bool = False
) -> Source:
    """Reads the pixels to upscale: the selection's bounding box, or the whole
    canvas without a selection or with ``whole``. Raises :class:`UserError`,
    :class:`UnsupportedColorSpace` or :class:`region.NothingToUpscale`."""
    if document is None:
        raise UserError("Open a document first.")
    merged = source == SOURCE_MERGED
    if merged:
        node = None
        space = (document.colorModel(), document.colorDepth(), document.colorProfile())
        label = "Merged"
    else:
        if node is None:
            node = document.activeNode()
        if node is None:
            raise UserError("Select a layer to upscale first.")
        if node.type() in MASK_TYPES:
            raise UserError(
                f"The active node is a mask ({node.name()}); select the layer to upscale."
            )
        space = (node.colorModel(), node.colorDepth(), node.colorProfile())
        label = node.name()
    layout = pixels.layout_for(*space)
    selection = None if whole else selection_rect(document)
    rect = region.source_rect((document.width(), document.height()), selection)
    document.waitForDone()
    if merged:
        data = document.pixelData(rect.x, rect.y, rect.width, rect.height)
    else:
        data = node.projectionPixelData(rect.x, rect.y, rect.width, rect.height)
    data = bytes(data)
    expected = rect.width * rect.height * layout.bytes_per_pixel
    if len(data) != expected:
        raise UserError(
            f"Krita returned {len(data)} bytes for a {rect.width}×{rect.height} region where "
            f"{expected} were expected; the layer cannot be read."
        )
    image = Image(rect.width, rect.height, layout.channels, layout.sample, layout.transfer, data)
    return Source(document, node, rect, layout, image, space[0], space[1], space[2], label)


def convert_document(document: Any, conversion: Any) -> None:
    """Converts the document to the colour space an :class:`UnsupportedColorSpace`
    offered (one undo step)."""
    model, depth = conversion
    if not document.setColorSpace(model, depth, CONVERSION_PROFILE):
        raise UserError(f"Krita could not convert the document to {depth} {model}.")
    document.waitForDone()


def check_result(source: Source, result: Image) -> None:
    if (result.channels, result.sample, result.transfer) != tuple(source.layout):
        raise UserError(
            "The daemon answered in another pixel format than it was sent; the result was not used."
        )
    if len(result.data) != result.width * result.height * source.layout.bytes_per_pixel:
        raise UserError("The daemon's result has the wrong number of bytes; it was not used.")


def is_open(app: Any, document: Any) -> bool:
    return any(d == document for d in app.documents())


def _node_in(document: Any, node: Any) -> bool:
    """Whether ``node`` is still in ``document``'s layer tree."""
    if node is None:
        return False
    wanted = node.uniqueId()
    pending = [document.rootNode()]
    while pending:
        current = pending.pop()
        if current.uniqueId() == wanted:
            return True
        pending.extend(current.childNodes())
    return False


def _new_layer(document: Any, name: str, source: Source, result: Image, x: int, y: int) -> Any:
    layer = document.createNode(name, "paintlayer")
    if (layer.colorModel(), layer.colorDepth(), layer.colorProfile()) != (
        source.color_model,
        source.color_depth,
        source.color_profile,
    ):
        layer.setColorSpace(source.color_model, source.color_depth, source.color_profile)
    # Filled before it joins the tree: adding it is then the only undo step.
    layer.setPixelData(result.data, x, y, result.width, result.height)
    return layer


def result_name(source: Source, scale: float, result: Image) -> str:
    return region.layer_name(scale, result.width, result.height, source.label)


def to_new_document(app: Any, source: Source, result: Image, scale: float) -> Any:
    """A new document of the result's size holding the result as its only
    layer; shown in the active window when there is one. Returns it."""
    check_result(source, result)
    name = result_name(source, scale, result)
    document = app.createDocument(
        result.width,
        result.height,
        name,
        source.color_model,
        source.color_depth,
        source.color_profile,
        source.document.resolution(),
    )
    root = document.rootNode()
    layer = _new_layer(document, name, source, result, 0, 0)
    root.addChildNode(layer, None)
    for child in root.childNodes():
        if child.uniqueId() != layer.uniqueId():
            child.remove()  # the default white background
    document.setActiveNode(layer)
    document.waitForDone()
    document.refreshProjection()
    window = app.activeWindow()
    if window is not None:
        window.addView(document)
    return document


def resolution_of(document: Any) -> tuple:
    """The document's horizontal and vertical resolution in pixels per inch,
    unrounded where this Krita can say (``xRes``/``yRes``)."""
    if hasattr(document, "xRes") and hasattr(document, "yRes"):
        return float(document.xRes()), float(document.yRes())
    resolution = float(document.resolution())
    return resolution, resolution


def scale_canvas(document: Any, width: int, height: int) -> None:
    """Scales the canvas (every layer, Bicubic) to ``width``×``height``,
    keeping the resolution. ``Document.scaleImage`` takes the resolution in
    whole pixels per inch and divides it by 72 in integers (Krita 5.1 and
    5.2), so a resolution that is not a multiple of 72 ppi (300 ppi, say,
    which becomes 288) is set back afterwards: one more undo step, as every
    resolution change through the scripting API is."""
    x_res, y_res = resolution_of(document)
    document.scaleImage(width, height, int(round(x_res)), int(round(y_res)), "Bicubic")
    document.waitForDone()
    if resolution_of(document) == (x_res, y_res):
        return
    if x_res == y_res and float(x_res).is_integer():
        document.setResolution(int(x_res))  # both axes in one step
    elif hasattr(document, "setXRes") and hasattr(document, "setYRes"):
        document.setXRes(x_res)
        document.setYRes(y_res)
    else:
        document.setResolution(int(round(x_res)))
    document.waitForDone()


def in_place(app: Any, source: Source, result: Image, scale: float) -> Any:
    """Scales the source document's canvas to fit the result (if it does not
    already) and adds the result as a new layer above the source layer (or on
    top for the merged image). Returns the new layer."""
    check_result(source, result)
    document = source.document
    if not is_open(app, document):
        raise UserError("The document was closed before the result arrived.")
    place = region.in_place(
        (document.width(), document.height()), source.rect, (result.width, result.height)
    )
    if (place.canvas_width, place.canvas_height) != (document.width(), document.height()):
        scale_canvas(document, place.canvas_width, place.canvas_height)
    layer = _new_layer(
        document, result_name(source, scale, result), source, result, place.x, place.y
    )
    above = source.node if _node_in(document, source.node) else None
    parent = above.parentNode() if above is not None else document.rootNode()
    parent.addChildNode(layer, above)
    document.waitForDone()
    document.setActiveNode(layer)
    document.refreshProjection()
    return layer


def preview_layer(app: Any, source: Source, result: Image, over: region.Rect, scale: float) -> Any:
    """Shows a preview (``result``, the upscaled look of ``over``) as a new
    layer on top of the source layer, scaled to ``over`` and placed on it:
    one undo step. The scaling happens in a scratch document that is closed
    again, so the user's document sees only the finished layer."""
    check_result(source, result)
    document = source.document
    if not is_open(app, document):
        raise UserError("The document was closed before the preview arrived.")
    data = result.data
    if (result.width, result.height) != (over.width, over.height):
        scratch = app.createDocument(
            result.width,
            result.height,
            "tessera-preview",
            source.color_model,
            source.color_depth,
            source.color_profile,
            72.0,
        )
        try:
            layer = _new_layer(scratch, "preview", source, result, 0, 0)
            scratch.rootNode().addChildNode(layer, None)
            scratch.waitForDone()
            scratch.scaleImage(over.width, over.height, 72, 72, "Bicubic")
            scratch.waitForDone()
            data = bytes(layer.pixelData(0, 0, over.width, over.height))
        finally:
            scratch.setModified(False)
            scratch.close()
    shown = Image(over.width, over.height, result.channels, result.sample, result.transfer, data)
    name = region.preview_name(scale, result.width, result.height)
    layer = _new_layer(document, name, source, shown, over.x, over.y)
    above = source.node if _node_in(document, source.node) else None
    parent = above.parentNode() if above is not None else document.rootNode()
    parent.addChildNode(layer, above)
    document.waitForDone()
    document.refreshProjection()
    return layer
