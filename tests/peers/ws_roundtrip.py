"""paho-mqtt over WebSockets (transport="websockets"): subscribe, publish at QoS 1, and
receive both its own message and one published by a TCP client, for tests/websocket.rs.

Prints one line per event, flushed, for the Rust test to wait on:
`connected`, `subscribed CODES`, `published TOPIC`, `received TOPIC PAYLOAD QOS`,
`closed`. The Rust side publishes `TOPIC/tcp from-tcp` over TCP once it has seen
`subscribed`; the script ends after it received both messages. Each wait blocks on a
paho callback and gives up after PATIENCE seconds (exit status 1); nothing sleeps.
"""

import argparse
import queue
import sys
import urllib.parse

import paho.mqtt.client as mqtt

PATIENCE = 30


def say(line):
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/PATH")
    parser.add_argument("--version", choices=["3", "5"], required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "ws" or url.port is None:
        say(f"error --url must be ws://HOST:PORT/PATH, not {args.url}")
        sys.exit(2)

    events = queue.Queue()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-ws-v{args.version}",
        protocol=mqtt.MQTTv5 if args.version == "5" else mqtt.MQTTv311,
        transport="websockets",
        reconnect_on_failure=False,
    )
    client.ws_set_options(path=url.path or "/")
    client.on_connect = lambda c, u, flags, rc, props: events.put(("connect", rc.value))
    client.on_subscribe = lambda c, u, mid, codes, props: events.put(
        ("subscribe", [code.value for code in codes])
    )
    client.on_message = lambda c, u, m: events.put(
        ("message", (m.topic, m.payload.decode("utf-8", "replace"), m.qos))
    )
    client.on_disconnect = lambda c, u, flags, rc, props: events.put(("disconnect", rc.value))

    def wait(kind):
        while True:
            try:
                event, value = events.get(timeout=PATIENCE)
            except queue.Empty:
                say(f"error no {kind} within {PATIENCE} s")
                sys.exit(1)
            if event == kind:
                return value
            if event == "disconnect":
                say(f"error disconnected (reason {value}) while waiting for {kind}")
                sys.exit(1)
            if event == "message":
                # A message that came early; keep it for the receive loop.
                early.append(value)

    early = []
    client.connect(url.hostname, url.port, keepalive=60)
    client.loop_start()
    code = wait("connect")
    if code != 0:
        say(f"error connack {code}")
        sys.exit(1)
    say("connected")
    client.subscribe(f"{args.topic}/#", qos=1)
    say("subscribed " + ",".join(str(c) for c in wait("subscribe")))
    own = f"{args.topic}/paho"
    info = client.publish(own, "from-paho", qos=1)
    info.wait_for_publish(timeout=PATIENCE)
    if not info.is_published():
        say(f"error publish {own} not acknowledged in {PATIENCE} s")
        sys.exit(1)
    say(f"published {own}")
    wanted = {(own, "from-paho"), (f"{args.topic}/tcp", "from-tcp")}
    while wanted:
        topic, payload, qos = early.pop(0) if early else wait("message")
        say(f"received {topic} {payload} {qos}")
        wanted.discard((topic, payload))
    client.disconnect()
    wait("disconnect")
    client.loop_stop()
    say("closed")


main()
