#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A local app on iothubd: answers the direct method "reboot" and prints cloud-to-device messages.

Needs python3-dbus and python3-gi (Debian packages); the caller must be root or in group iothub.
  /usr/bin/python3 examples/iothubd_app.py [--exit-after N]
"""
import json
import sys

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
# follow_name_owner_changes: calls go to whichever process owns org.iothubd now, also after a
# restart of the daemon (by default the proxy stays bound to the first owner).
device = dbus.Interface(bus.get_object("org.iothubd", "/org/iothubd/Device",
                                       follow_name_owner_changes=True), "org.iothubd.Device1")
loop = GLib.MainLoop()
remaining = int(sys.argv[2]) if sys.argv[1:2] == ["--exit-after"] else -1


def handled():
    global remaining
    remaining -= 1
    if remaining == 0:
        loop.quit()


def on_method_request(request_id, method_name, payload_json):
    print(f"method {method_name} {payload_json}", flush=True)
    device.SendMethodResponse(request_id, 200, json.dumps({"rebooting": True}))
    handled()


def on_message(body, properties, system_properties):
    def plain(props):
        return {str(k): str(v) for k, v in props.items()}

    print("message", bytes(body).decode(errors="replace"), plain(properties),
          plain(system_properties), flush=True)
    handled()


for signal, handler in (("MethodRequestReceived", on_method_request), ("MessageReceived", on_message)):
    bus.add_signal_receiver(handler, signal_name=signal, dbus_interface="org.iothubd.Device1",
                            bus_name="org.iothubd", path="/org/iothubd/Device")


def on_owner(owner):
    # Called with the daemon's unique name now and whenever org.iothubd changes hands: a claim
    # ends when this process leaves the bus, and also when iothubd restarts, so claim again.
    if owner:
        device.RegisterMethodHandler("reboot")
        print("ready", flush=True)


bus.watch_name_owner("org.iothubd", on_owner)
loop.run()
