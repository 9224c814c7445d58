"""A stock GStreamer webrtcbin WHIP publisher or WHEP player, for the interop tests.

Runs under the SYSTEM Python (/usr/bin/python3, Debian's python3-gi and GStreamer 1.22), not
the project's virtualenv: `tests/test_gstreamer.py` starts it as a subprocess. webrtcbin keeps
its default certificate (RSA in 1.22), which is the point: the node must accept it.

    webrtcbin_client.py whip URL TOKEN [--seconds S]   videotestsrc/vp8enc + audiotestsrc/opusenc
    webrtcbin_client.py whep URL TOKEN [--seconds S]   decodes what arrives, counts frames
    (--local-address A: ICE host candidates on A only; default 127.0.0.1, '' for all)

What a WHIP/WHEP client does: make a complete (non-trickle) offer, POST it with the bearer
token, apply the 201 answer, run, DELETE the Location. The last stdout line is a JSON report:
`status` (the POST's), `connection_state`, `ice_state`, `dtls_states`, and per kind the
buffers seen (`sent_rtp`: RTP buffers handed to webrtcbin; `decoded`: frames or audio buffers
out of the decoders, with the video size). Errors go to `error`; the exit status is 0 only
when the session reached `connected`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO_CAPS = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
AUDIO_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"

PUBLISH_PIPELINE = f"""
webrtcbin name=webrtc bundle-policy=max-bundle
videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1
  ! videoconvert ! vp8enc deadline=1 keyframe-max-dist=30 target-bitrate=500000
  ! rtpvp8pay name=vpay pt=96 ! {VIDEO_CAPS} ! webrtc.
audiotestsrc is-live=true wave=sine freq=660 ! audioconvert ! audioresample
  ! audio/x-raw,rate=48000,channels=1 ! opusenc ! rtpopuspay name=apay pt=111
  ! {AUDIO_CAPS} ! webrtc.
"""
PROBE_BUFFERS = Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST


class Client:
    """One webrtcbin session against a WHIP or WHEP endpoint, driven from a GLib main loop."""

    def __init__(
        self, mode: str, url: str, token: str, seconds: float, local_address: str = "127.0.0.1"
    ) -> None:
        self.mode = mode
        self.url = url
        self.token = token
        self.seconds = seconds
        self.loop = GLib.MainLoop()
        self.lock = threading.Lock()
        self.report: dict = {
            "mode": mode,
            "status": None,
            "connection_state": "new",
            "ice_state": "new",
            "dtls_states": [],
            "sent_rtp": {"video": 0, "audio": 0},
            "decoded": {"video": 0, "audio": 0},
            "video_size": None,
            "error": None,
        }
        self.location: str | None = None
        self.connected_at: float | None = None
        if mode == "whip":
            self.pipeline = Gst.parse_launch(PUBLISH_PIPELINE)
            self.webrtc = self.pipeline.get_by_name("webrtc")
            for name, kind in (("vpay", "video"), ("apay", "audio")):
                pad = self.pipeline.get_by_name(name).get_static_pad("src")
                pad.add_probe(PROBE_BUFFERS, self._count, ("sent_rtp", kind))
        else:
            self.pipeline = Gst.Pipeline.new("whep")
            self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
            self.webrtc.set_property("bundle-policy", "max-bundle")
            self.pipeline.add(self.webrtc)
            for caps in (VIDEO_CAPS, AUDIO_CAPS):
                self.webrtc.emit(
                    "add-transceiver",
                    GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                    Gst.Caps.from_string(caps),
                )
            self.webrtc.connect("pad-added", self._on_pad_added)
        if local_address:
            # host candidates on that address only (loopback in the tests: the node under test
            # listens there). webrtcbin 1.22 hands its ICE agent out with a floating reference
            # that PyGObject would sink and drop (destroying the agent): keep one of our own.
            self.ice_agent = self.webrtc.get_property("ice-agent")
            self.ice_agent.ref()
            self.ice_agent.emit("add-local-ip-address", local_address)
        self.offered = False
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::connection-state", self._on_state)
        self.webrtc.connect("notify::ice-connection-state", self._on_state)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)

    # -- signalling ----------------------------------------------------------------------------

    def start(self) -> None:
        self.pipeline.set_state(Gst.State.PLAYING)
        if self.mode == "whip":
            for transceiver in self._transceivers():
                transceiver.set_property(
                    "direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY
                )
        GLib.timeout_add(int(self.seconds * 1000), self._finish)

    def _on_negotiation_needed(self, _webrtc) -> None:
        if self.offered:
            return
        self.offered = True
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        self.webrtc.emit("create-offer", None, promise)

    def _transceivers(self) -> list:
        transceivers, index = [], 0
        while (transceiver := self.webrtc.emit("get-transceiver", index)) is not None:
            transceivers.append(transceiver)
            index += 1
        return transceivers

    def _on_offer(self, promise: Gst.Promise, _data) -> None:
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            self._fail(f"create-offer failed: {reply.to_string() if reply else 'no reply'}")
            return
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, *_args) -> None:
        state = self.webrtc.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and self.report["status"] is None:
            GLib.idle_add(self._post_offer)

    def _post_offer(self) -> bool:
        """POST the complete offer (all candidates in it), apply the answer."""
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        request = urllib.request.Request(
            self.url,
            data=offer.encode(),
            method="POST",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                self.report["status"] = response.status
                self.location = response.headers.get("Location")
                answer_text = response.read().decode()
        except urllib.error.HTTPError as exc:
            self.report["status"] = exc.code
            self._fail(f"POST {exc.code}: {exc.read().decode(errors='replace')[:300]}")
            return False
        except OSError as exc:
            self._fail(f"POST failed: {exc!r}")
            return False
        result, sdp = GstSdp.SDPMessage.new_from_text(answer_text)
        if result != GstSdp.SDPResult.OK:
            self._fail("answer SDP does not parse")
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def _delete(self) -> None:
        if not self.location:
            return
        url = urllib.parse.urljoin(self.url, self.location)
        request = urllib.request.Request(
            url, method="DELETE", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                self.report["delete_status"] = response.status
        except urllib.error.HTTPError as exc:
            self.report["delete_status"] = exc.code
        except OSError as exc:
            self.report["delete_status"] = repr(exc)

    # -- media -----------------------------------------------------------------------------------

    def _on_pad_added(self, _webrtc, pad: Gst.Pad) -> None:
        """A received stream: depayload, decode and count what comes out of the decoder."""
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        media = caps.get_structure(0).get_string("media")
        if media == "video":
            chain = "rtpvp8depay ! vp8dec name=dec ! fakesink sync=false"
        else:
            chain = "rtpopusdepay ! opusdec name=dec ! fakesink sync=false"
        bin_ = Gst.parse_bin_from_description(chain, True)
        self.pipeline.add(bin_)
        bin_.sync_state_with_parent()
        pad.link(bin_.get_static_pad("sink"))
        decoder_src = bin_.get_by_name("dec").get_static_pad("src")
        decoder_src.add_probe(PROBE_BUFFERS, self._count, ("decoded", media))

    def _count(self, pad: Gst.Pad, info, where: tuple[str, str]) -> Gst.PadProbeReturn:
        field, kind = where
        buffers = 1
        if info.type & Gst.PadProbeType.BUFFER_LIST:  # payloaders push a frame's packets at once
            buffers = info.get_buffer_list().length()
        with self.lock:
            self.report[field][kind] += buffers
            if field == "decoded" and kind == "video" and self.report["video_size"] is None:
                caps = pad.get_current_caps()
                if caps is not None:
                    structure = caps.get_structure(0)
                    self.report["video_size"] = [
                        structure.get_int("width")[1],
                        structure.get_int("height")[1],
                    ]
        return Gst.PadProbeReturn.OK

    # -- state -------------------------------------------------------------------------------------

    def _on_state(self, *_args) -> None:
        connection = self.webrtc.get_property("connection-state").value_nick
        ice = self.webrtc.get_property("ice-connection-state").value_nick
        self.report["connection_state"] = connection
        self.report["ice_state"] = ice
        if connection == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self.report["dtls_states"] = self._dtls_states()

    def _dtls_states(self) -> list[str]:
        states = []
        for transceiver in self._transceivers():
            transport = transceiver.get_property("receiver").get_property("transport")
            if transport is not None:
                states.append(transport.get_property("state").value_nick)
        return states

    def _on_error(self, _bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        self._fail(f"{error.message} ({debug})")

    def _fail(self, reason: str) -> None:
        if self.report["error"] is None:
            self.report["error"] = reason
        GLib.idle_add(self._finish)

    def _finish(self) -> bool:
        if self.loop.is_running():
            self.report["dtls_states"] = self._dtls_states() or self.report["dtls_states"]
            self._on_state()
            self._delete()
            self.loop.quit()
        return False

    def run(self) -> dict:
        self.start()
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        return self.report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["whip", "whep"])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to run")
    parser.add_argument(
        "--local-address",
        default="127.0.0.1",
        help="the one address for ICE host candidates ('' = every interface, as webrtcbin does)",
    )
    args = parser.parse_args()
    Gst.init(None)
    report = Client(args.mode, args.url, args.token, args.seconds, args.local_address).run()
    print(json.dumps(report), flush=True)
    return 0 if report["connection_state"] == "connected" else 1


if __name__ == "__main__":
    sys.exit(main())
