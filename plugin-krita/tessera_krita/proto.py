"""The protocol client, ``tessera_client`` from ``shared/python/``.

The release zip carries a verbatim copy of it in ``tessera_krita/vendor/``
(``plugin-krita/build.py`` puts it there), so that the plug-in needs
nothing besides Krita. In the source tree, where there is no copy, the
package on ``sys.path`` is used instead (the tests put ``shared/python``
there).
"""

try:
    from .vendor import tessera_client
except ImportError:
    import tessera_client  # type: ignore[no-redef]

from_vendor = tessera_client.__name__ != "tessera_client"

CLARITY_NEGATIVE_PROMPT = tessera_client.CLARITY_NEGATIVE_PROMPT
CLARITY_PROMPT = tessera_client.CLARITY_PROMPT
Channels = tessera_client.Channels
ConnectionClosed = tessera_client.ConnectionClosed
DaemonNotRunning = tessera_client.DaemonNotRunning
Done = tessera_client.Done
Error = tessera_client.Error
ErrorInfo = tessera_client.ErrorInfo
ErrorKind = tessera_client.ErrorKind
Failed = tessera_client.Failed
FrameReader = tessera_client.FrameReader
GetStatus = tessera_client.GetStatus
Handshake = tessera_client.Handshake
JobTicket = tessera_client.JobTicket
Image = tessera_client.Image
JobParams = tessera_client.JobParams
ListModels = tessera_client.ListModels
ModelEntry = tessera_client.ModelEntry
ModelKind = tessera_client.ModelKind
Models = tessera_client.Models
Progress = tessera_client.Progress
PROTOCOL_VERSION = tessera_client.PROTOCOL_VERSION
Preset = tessera_client.Preset
ProtocolError = tessera_client.ProtocolError
Rejected = tessera_client.Rejected
Region = tessera_client.Region
Accepted = tessera_client.Accepted
SampleFormat = tessera_client.SampleFormat
Shutdown = tessera_client.Shutdown
ShuttingDown = tessera_client.ShuttingDown
SocketAddress = tessera_client.SocketAddress
Status = tessera_client.Status
Session = tessera_client.Session
Submit = tessera_client.Submit
Cancel = tessera_client.Cancel
TesseraError = tessera_client.TesseraError
Transfer = tessera_client.Transfer
CONNECTION_ERRORS = tessera_client.CONNECTION_ERRORS
data_dir = tessera_client.data_dir
list_installed = tessera_client.list_installed
decode = tessera_client.decode
encode_parts = tessera_client.encode_parts
frame_parts = tessera_client.frame_parts
error_kind_name = tessera_client.error_kind_name
socket_address = tessera_client.socket_address
#: A session's state once the handshake is done.
OPEN = tessera_client.session.OPEN
client_version = tessera_client.__version__
