"""The paho-mqtt 2.x client wrapped for the broker tests: one Peer per connection,
every callback turned into an event on a queue, and waits that block on those events.

Nothing here sleeps to let something happen. Each wait blocks on a callback (CONNACK,
SUBACK, PUBACK/PUBCOMP, a message) and gives up after PATIENCE seconds, which only turns
a hang into a failure. The scenario scripts print what they observed as JSON lines on
stdout; the Rust tests (tests/paho.rs) decide what is right.
"""

import argparse
import json
import os
import queue
import socket
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# How long a wait may block before the scenario fails (the Rust side uses 30 s too).
PATIENCE = 30


def emit(**fields):
    """One observation, as one JSON line the Rust test reads."""
    print(json.dumps(fields, sort_keys=True), flush=True)


def arguments(extra=None):
    """`--port PORT --version 3|5` plus whatever a scenario adds."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", choices=["3", "5"], required=True)
    if extra:
        extra(parser)
    return parser.parse_args()


class Failed(Exception):
    """A wait that ran out of patience, or an answer the scenario cannot go on from."""


def properties(packet_type, **values):
    """A v5 property set, e.g. properties(PacketTypes.CONNECT, SessionExpiryInterval=60)."""
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


class Peer:
    """One paho client connected to 127.0.0.1:port, its callbacks queued per kind."""

    def __init__(
        self,
        port,
        version,
        client_id="",
        clean=True,
        session_expiry=None,
        will=None,
        will_delay=None,
    ):
        self.version = version
        self.port = port
        self.client_id = client_id
        self.queues = {
            kind: queue.Queue()
            for kind in ("connect", "subscribe", "unsubscribe", "message", "disconnect")
        }
        protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            # v3.1.1 takes clean session here; v5 takes clean start in connect().
            clean_session=None if version == "5" else clean,
            # A broken connection is something the scenarios look at, not something to
            # paper over with a reconnect.
            reconnect_on_failure=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        if will is not None:
            topic, payload, qos = will
            will_props = None
            if version == "5" and will_delay is not None:
                will_props = properties(PacketTypes.WILLMESSAGE, WillDelayInterval=will_delay)
            self.client.will_set(topic, payload, qos=qos, retain=False, properties=will_props)
        connect_args = {}
        if version == "5":
            connect_args["clean_start"] = clean
            if session_expiry is not None:
                connect_args["properties"] = properties(
                    PacketTypes.CONNECT, SessionExpiryInterval=session_expiry
                )
        self.client.connect("127.0.0.1", port, keepalive=60, **connect_args)
        self.client.loop_start()
        self.session_present, self.connect_reason = self.wait("connect")
        if self.connect_reason != 0:
            raise Failed(f"{client_id}: CONNACK reason {self.connect_reason}")

    # Callbacks run on paho's network thread; they only queue.
    def _on_connect(self, client, userdata, flags, reason_code, props):
        self.queues["connect"].put((bool(flags.session_present), reason_code.value))

    def _on_subscribe(self, client, userdata, mid, reason_codes, props):
        self.queues["subscribe"].put((mid, [code.value for code in reason_codes]))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, props):
        self.queues["unsubscribe"].put((mid, [code.value for code in reason_codes]))

    def _on_message(self, client, userdata, message):
        self.queues["message"].put(
            {
                "topic": message.topic,
                "payload": message.payload.decode("utf-8", "replace"),
                "qos": message.qos,
                "retain": bool(message.retain),
                "dup": bool(message.dup),
            }
        )

    def _on_disconnect(self, client, userdata, flags, reason_code, props):
        self.queues["disconnect"].put(reason_code.value)

    def wait(self, kind):
        """The next event of `kind`; fails after PATIENCE seconds without one."""
        try:
            return self.queues[kind].get(timeout=PATIENCE)
        except queue.Empty:
            raise Failed(f"{self.client_id or 'peer'}: no {kind} within {PATIENCE} s") from None

    def subscribe(self, topic_filter, qos):
        """Subscribes and waits for the SUBACK; returns its reason codes."""
        result, mid = self.client.subscribe(topic_filter, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise Failed(f"subscribe {topic_filter}: {mqtt.error_string(result)}")
        acked_mid, codes = self.wait("subscribe")
        if acked_mid != mid:
            raise Failed(f"SUBACK for mid {acked_mid}, expected {mid}")
        return codes

    def publish(self, topic, payload, qos, retain=False):
        """Publishes; for QoS 1/2 waits for the PUBACK/PUBCOMP."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            info.wait_for_publish(timeout=PATIENCE)
            if not info.is_published():
                raise Failed(f"publish {topic} qos {qos}: not acknowledged in {PATIENCE} s")

    def next_message(self):
        return self.wait("message")

    def message_on(self, topic):
        """The next message on `topic`, and the list of those on other topics before it."""
        others = []
        while True:
            message = self.next_message()
            if message["topic"] == topic:
                return message, others
            others.append(message)

    def messages_until(self, fence_payload):
        """Every message up to and including the one whose payload is `fence_payload`.

        A fence is published by the same client after the messages under test, so on an
        ordered topic the broker delivers it after them: once it arrives, anything that
        was going to arrive has.
        """
        seen = []
        while True:
            message = self.next_message()
            seen.append(message)
            if message["payload"] == fence_payload:
                return seen

    def disconnect(self, session_expiry=None):
        """A clean DISCONNECT (the will is discarded); v5 may change the session expiry."""
        props = None
        if session_expiry is not None:
            props = properties(PacketTypes.DISCONNECT, SessionExpiryInterval=session_expiry)
        self.client.disconnect(properties=props)
        self.wait("disconnect")
        self.client.loop_stop()

    def vanish(self):
        """Drops the TCP connection without DISCONNECT, as a crashed client would."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def run(main):
    """Runs a scenario; a Failed wait exits 1 with the reason on stderr."""
    try:
        main()
    except Failed as failure:
        print(f"scenario failed: {failure}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    # paho's network threads are daemons; leave without waiting on them.
    os._exit(0)
