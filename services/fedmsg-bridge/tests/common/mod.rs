//! What the bridge's tests share: the recorded bus messages and a ZeroMQ publisher.

pub const SAMPLES: &str = include_str!("../../../../tests/fixtures/fedmsg-real.jsonl");
pub const KOJI_MSG_ID: &str = "2015-6395fb7a-e5a7-4b95-858a-ff7b80410e7f";
pub const KOJI_TOPIC: &str = "org.fedoraproject.prod.buildsys.build.state.change";

/// The recorded Koji "build completed" message (ansible, state 1).
pub fn koji_build_completed() -> String {
    SAMPLES
        .lines()
        .find(|l| l.contains(KOJI_MSG_ID))
        .expect("the Koji sample is in the fixture")
        .to_string()
}

/// A PUB socket on a free port of 127.0.0.1, and its endpoint.
pub fn publisher() -> (zmq::Socket, String) {
    let socket = zmq::Context::new().socket(zmq::PUB).unwrap();
    socket.set_linger(0).unwrap();
    socket.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = socket.get_last_endpoint().unwrap().unwrap();
    (socket, endpoint)
}

pub fn send(socket: &zmq::Socket, frames: &[&[u8]]) {
    socket.send_multipart(frames, 0).unwrap();
}

/// The bridge's count of bus messages with `outcome` in the exposition `metrics` (0 when absent).
pub fn messages_counted(metrics: &str, outcome: &str) -> f64 {
    let series = format!(
        "{}{{outcome=\"{outcome}\"}}",
        taskbot_fedmsg_bridge::MESSAGES_METRIC
    );
    taskbot::ops::sample(metrics, &series).unwrap_or_default()
}
