"""A scripted stand-in for ``tessera serve``, for the plug-in's error paths
that the real daemon will not produce on demand (a crash mid-job, another
protocol version). Speaks the real protocol through ``tessera_client``;
"upscales" by repeating pixels.

    python3 fake_daemon.py SOCKET [--mode normal|crash-mid-job|version-mismatch]
                                  [--steps N] [--delay SECONDS]
"""

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "python"))

from tessera_client import (  # noqa: E402
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    ConnectionClosed,
    Done,
    ErrorInfo,
    ErrorKind,
    Failed,
    GetStatus,
    Handshake,
    Image,
    ListModels,
    ModelEntry,
    ModelKind,
    Models,
    Progress,
    Shutdown,
    ShuttingDown,
    Status,
    Submit,
    read_frame,
    write_frame,
)


def repeat_pixels(image: Image, factor: int) -> Image:
    size = image.pixel_bytes
    rows = []
    for y in range(image.height):
        row = image.data[y * image.width * size : (y + 1) * image.width * size]
        wide = b"".join(row[x * size : (x + 1) * size] * factor for x in range(image.width))
        rows.append(wide * factor)
    return Image(
        image.width * factor,
        image.height * factor,
        image.channels,
        image.sample,
        image.transfer,
        b"".join(rows),
    )


class Connection:
    def __init__(self, sock: socket.socket, args: argparse.Namespace, server: "Server") -> None:
        self.sock = sock
        self.args = args
        self.server = server
        self.lock = threading.Lock()
        self.cancelled = set()
        self.jobs = 0

    def send(self, message) -> None:
        with self.lock:
            write_frame(self.sock, message)

    def run(self) -> None:
        try:
            hello = read_frame(self.sock)
            assert isinstance(hello, Handshake), hello
            version = PROTOCOL_VERSION + (1 if self.args.mode == "version-mismatch" else 0)
            self.send(Handshake(version, "tessera fake"))
            while True:
                message = read_frame(self.sock)
                if isinstance(message, Submit):
                    self.server.job_number += 1
                    job = self.server.job_number
                    self.send(Accepted(message.request, job, 0))
                    threading.Thread(target=self.work, args=(job, message), daemon=True).start()
                elif isinstance(message, Cancel):
                    self.cancelled.add(message.job)
                elif isinstance(message, GetStatus):
                    self.send(Status("0.0.0-fake", "none", "fake", None, 0.0, 0, 1, "/tmp"))
                elif isinstance(message, ListModels):
                    entry = ModelEntry(ModelKind.UPSCALER, "fake-x2", "upscalers/fake-x2.pth", 1)
                    self.send(Models([entry]))
                elif isinstance(message, Shutdown):
                    self.send(ShuttingDown())
                    os._exit(0)
        except (ConnectionClosed, OSError):
            pass
        finally:
            self.sock.close()

    def work(self, job: int, submit: Submit) -> None:
        steps = self.args.steps
        try:
            for step in range(1, steps + 1):
                time.sleep(self.args.delay)
                if job in self.cancelled:
                    self.send(Failed(job, ErrorInfo(ErrorKind.CANCELLED, "the job was cancelled")))
                    return
                if self.args.mode == "crash-mid-job" and step > steps // 2:
                    os._exit(3)
                self.send(Progress(job, 0, 1, "upscale", 1, 1, step, steps, step / steps))
            factor = max(1, int(round(submit.params.scale)))
            self.send(Done(job, repeat_pixels(submit.image, factor), []))
        except OSError:
            pass


class Server:
    job_number = 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("--mode", default="normal")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    listener.listen(8)
    server = Server()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=Connection(conn, args, server).run, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
