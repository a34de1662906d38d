"""Serve a video file as H.264 over RTSP on 127.0.0.1 with the GStreamer RTSP server (Debian: gir1.2-gst-rtsp-server-1.0,
python3-gi); run with the system python (/usr/bin/python3), which has the bindings. Prints the URL, runs until killed."""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer, GLib

Gst.init(None)
video, port = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f"( filesrc location={video} ! decodebin ! videoconvert ! x264enc tune=zerolatency "
                   "key-int-max=10 ! rtph264pay name=pay0 pt=96 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/camera", factory)
server.attach(None)
print(f"rtsp://127.0.0.1:{server.get_bound_port()}/camera", flush=True)
GLib.MainLoop().run()
