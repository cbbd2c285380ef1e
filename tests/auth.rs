//! Access tokens against a real node (issue 6, first part): `token issue`, and what each role
//! may do over REST (200/403/401).

mod common;

use std::time::Duration;

use common::Cluster;
use reqwest::Method;

const READY: Duration = Duration::from_secs(30);

mod grpc {
    tonic::include_proto!("edgefabric.v1");
}

fn with<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn call(c: &Cluster, token: &str, method: Method, path: &str, body: Option<&str>) -> u16 {
    let mut req = c.client.request(method, format!("{}{path}", c.http(1))).bearer_auth(token);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_roles_and_every_route_checks_them() {
    let mut c = Cluster::init(1, "a", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let admin = c.token.clone();
    let token_file = c.token_file();
    let token_file = token_file.to_str().unwrap().to_string();
    assert_eq!(call(&c, &admin, Method::PUT, "/v1/namespaces/med", Some(r#"{"class":"public"}"#)).await, 201);
    assert_eq!(call(&c, &admin, Method::PUT, "/v1/namespaces/ops", Some(r#"{"class":"public"}"#)).await, 201);
    let issue = |roles: &[&str], ttl: &str| {
        let mut args: Vec<String> = vec!["token".into(), "issue".into(), "--subject".into(), "app-1".into()];
        for r in roles {
            args.push("--role".into());
            args.push(r.to_string());
        }
        args.extend([
            "--ttl".into(),
            ttl.into(),
            "--endpoint".into(),
            c.http(1).into(),
            "--token-file".into(),
            token_file.clone(),
        ]);
        args
    };
    let mut tokens = std::collections::BTreeMap::new();
    for role in ["reader:med", "writer:med", "admin:med", "auditor", "publisher"] {
        let args = issue(&[role], "1h");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = c.cli(&args).await;
        assert!(ok, "{out} {err}");
        let token = out.split_whitespace().last().unwrap().to_string();
        assert!(token.starts_with("v4.public."), "{out}");
        tokens.insert(role, token);
    }
    // Bad roles are refused before anything is issued; only the admin may issue.
    let args = issue(&["root"], "1h");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(!c.cli(&args).await.0);
    let body = r#"{"subject":"x","roles":["admin"]}"#;
    assert_eq!(call(&c, &tokens["writer:med"], Method::POST, "/v1/tokens", Some(body)).await, 403);

    // (role, method, path, body) → expected status.
    let cases: [(&str, Method, &str, Option<&str>, u16); 17] = [
        ("reader:med", Method::GET, "/v1/kv/med/k", None, 404),
        ("reader:med", Method::PUT, "/v1/kv/med/k", Some("v"), 403),
        ("reader:med", Method::GET, "/v1/kv/ops/k", None, 403),
        ("writer:med", Method::PUT, "/v1/kv/med/k", Some("v"), 200),
        ("writer:med", Method::GET, "/v1/kv/med/k", None, 200),
        ("writer:med", Method::DELETE, "/v1/kv/ops/k", None, 403),
        ("writer:med", Method::PUT, "/v1/namespaces/med", Some(r#"{"class":"public"}"#), 403),
        (
            "writer:med",
            Method::POST,
            "/v1/batch",
            Some(r#"{"ops":[{"op":"delete","ns":"med","key":"k"}]}"#),
            200,
        ),
        (
            "writer:med",
            Method::POST,
            "/v1/batch",
            Some(r#"{"ops":[{"op":"delete","ns":"ops","key":"k"}]}"#),
            403,
        ),
        ("admin:med", Method::PUT, "/v1/namespaces/med", Some(r#"{"class":"public"}"#), 200),
        ("admin:med", Method::PUT, "/v1/kv/med/k2", Some("v"), 200),
        ("admin:med", Method::POST, "/v1/cluster/nodes", Some("{}"), 403),
        ("auditor", Method::GET, "/v1/kv/med/k", None, 403),
        ("publisher", Method::GET, "/v1/kv/med/k", None, 403),
        ("publisher", Method::POST, "/v1/publishers", Some(r#"{"id":"p","public_key":"x"}"#), 403),
        ("reader:med", Method::GET, "/v1/cluster/status", None, 200),
        (
            "publisher",
            Method::POST,
            "/v1/images",
            Some(r#"{"name":"n","digest":"sha256:00","publisher":"p","signature":""}"#),
            400,
        ),
    ];
    for (role, method, path, body, want) in cases {
        let got = call(&c, &tokens[role], method.clone(), path, body).await;
        assert_eq!(got, want, "{role} {method} {path}");
    }
    // Reads of a namespace that does not exist are 404 naming it (get and scan).
    for path in ["/v1/kv/nope/k", "/v1/kv/nope?prefix=a"] {
        let r = c.client.get(format!("{}{path}", c.http(1))).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("namespace") && body.contains("nope"), "{path}: {body}");
    }
    // The admin token still does everything; garbage and tampered tokens are 401.
    assert_eq!(call(&c, &admin, Method::GET, "/v1/kv/ops/k", None).await, 404);
    assert_eq!(call(&c, "v4.public.AAAA", Method::GET, "/v1/kv/med/k", None).await, 401);
    let mut t = tokens["admin:med"].clone();
    t.insert(20, if t.as_bytes()[20] == b'A' { 'B' } else { 'A' });
    assert_eq!(call(&c, &t, Method::GET, "/v1/kv/med/k", None).await, 401);
    // The same rules over gRPC.
    let mut kv = grpc::kv_client::KvClient::new(c.grpc_channel(1).await);
    let get = grpc::GetRequest { ns: "med".into(), key: "k2".into(), stale: false };
    assert!(kv.get(with(&tokens["reader:med"], get.clone())).await.is_ok());
    let put = grpc::PutRequest { ns: "med".into(), key: "g".into(), value: b"v".to_vec(), cas: None };
    let err = kv.put(with(&tokens["reader:med"], put.clone())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("writer:med"), "{err}");
    assert!(kv.put(with(&tokens["writer:med"], put)).await.is_ok());
    let err = kv.get(with("v4.public.AAAA", get)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut cluster = grpc::cluster_client::ClusterClient::new(c.grpc_channel(1).await);
    let rm = grpc::RemoveNodeRequest { id: 1 };
    let err = cluster.remove_node(with(&tokens["admin:med"], rm)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // A revoked token stops working at once (one node here; the metadata group carries it).
    let id = {
        let claims_b64 = tokens["writer:med"].trim_start_matches("v4.public.").to_string();
        let body =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims_b64).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&body[..body.len() - 64]).unwrap();
        claims["jti"].as_str().unwrap().to_string()
    };
    assert_eq!(call(&c, &tokens["writer:med"], Method::GET, "/v1/kv/med/k2", None).await, 200);
    let (ok, out, err) =
        c.cli(&["token", "revoke", "--id", &id, "--endpoint", c.http(1), "--token-file", &token_file]).await;
    assert!(ok, "{out} {err}");
    assert_eq!(call(&c, &tokens["writer:med"], Method::GET, "/v1/kv/med/k2", None).await, 401);
    assert_eq!(
        call(&c, &tokens["reader:med"], Method::GET, "/v1/kv/med/k2", None).await,
        200,
        "others still work"
    );

    // An expired token is 401.
    let args = issue(&["reader:med"], "1s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, _) = c.cli(&args).await;
    assert!(ok);
    let short = out.split_whitespace().last().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&c, &short, Method::GET, "/v1/kv/med/k", None).await, 401);
}

/// Node-to-node traffic is authenticated with the node keys: a process that does not hold a
/// member's key cannot speak raft (or any internal RPC) to the cluster, whatever id it claims;
/// the member's own key works; a captured frame cannot be replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_rpcs_need_a_members_node_key() {
    use edgefabric_store::link::LinkAuth;
    use edgefabric_store::network::{Frame, InternalClient};
    use std::sync::Arc;

    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let node2_key = Arc::new(edgefabric_crypto::Identity::read(&c.cluster_dir().join("node2.key")).unwrap());
    let node1_pub =
        edgefabric_crypto::Identity::read(&c.cluster_dir().join("node1.key")).unwrap().public_key();
    let keys: std::collections::HashMap<u64, String> =
        [(1, node1_pub.to_base64()), (2, node2_key.public_key().to_base64())].into();
    let node3_key = Arc::new(edgefabric_crypto::Identity::read(&c.cluster_dir().join("node3.key")).unwrap());
    let data = bincode::serde::encode_to_vec((), bincode::config::standard()).unwrap();
    let genuine = LinkAuth::new(2, node2_key.clone(), keys.clone());
    // A frame as nodes send it: with the sender's call ticket for node 1 in its headers.
    let ticketed = |auth: &LinkAuth, f: Frame| {
        let mut r = tonic::Request::new(f);
        let t = auth.ticket(1).unwrap();
        r.metadata_mut().insert(edgefabric_store::link::TICKET_HEADER, t.parse().unwrap());
        r
    };

    // TLS without a client certificate (as apps connect): internal calls are refused from
    // their headers, whatever the frame.
    let anonymous = InternalClient::new(c.grpc_channel(1).await);
    let frame = genuine.request("status", 1, 0, data.clone()).unwrap();
    let e = anonymous.clone().status(ticketed(&genuine, frame)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("client certificate"), "{e:?}");
    // A node-key certificate of a key no member has: the handshake itself is refused.
    let outsider = edgefabric_crypto::Identity::generate().unwrap();
    match c.grpc_channel_as(1, Some(&outsider)).await {
        Err(_) => {}
        Ok(ch) => {
            let frame = genuine.request("status", 1, 0, data.clone()).unwrap();
            let r = InternalClient::new(ch).status(ticketed(&genuine, frame)).await;
            assert!(r.is_err(), "a non-member's certificate was let in");
        }
    }
    // Node 3's genuine frame over a connection bound to node 2's key: refused (a member can
    // not relay or speak as another over its own connection).
    let as_node2 = InternalClient::new(c.grpc_channel_as(1, Some(&node2_key)).await.unwrap());
    let keys3: std::collections::HashMap<u64, String> = [(1, node1_pub.to_base64())].into();
    let node3 = LinkAuth::new(3, node3_key.clone(), keys3);
    let from3 = node3.request("status", 1, 0, data.clone()).unwrap();
    let e = as_node2.clone().status(ticketed(&node3, from3)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("not node 3's key"), "{e:?}");

    // From here on, over node 2's connection: the frame checks still apply on top of TLS.
    let client = as_node2;
    // The metadata group's status, asked as node 2 (a harmless read: what matters is whether
    // the frame is let in).
    let status = |r: tonic::Request<Frame>| {
        let mut client = client.clone();
        async move { client.status(r).await }
    };

    // No authentication at all: no ticket, no MAC.
    let bare = Frame { group: 0, data: data.clone(), from: 2, to: 1, time_ms: 0, nonce: 1, mac: vec![] };
    let e = status(tonic::Request::new(bare.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("call ticket"), "{e:?}");
    // A genuine ticket on an unauthenticated frame: the frame's own MAC still refuses it.
    let e = status(ticketed(&genuine, bare)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("frame authentication failed"), "{e:?}");
    // Well formed, but made with a key that is not node 2's: its ticket is refused.
    let impostor = LinkAuth::new(2, Arc::new(edgefabric_crypto::Identity::generate().unwrap()), keys.clone());
    let forged = impostor.request("status", 1, 0, data.clone()).unwrap();
    let e = status(ticketed(&impostor, forged)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // An id that is no member.
    let stranger = LinkAuth::new(9, Arc::new(edgefabric_crypto::Identity::generate().unwrap()), keys.clone());
    let e = status(ticketed(&stranger, stranger.request("status", 1, 0, data.clone()).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("not a member"), "{e:?}");
    // Vote requests from the impostor, for every group: refused, so it cannot disturb raft.
    let vote = impostor.request("vote", 1, 0, data.clone()).unwrap();
    assert_eq!(
        client.clone().vote(ticketed(&impostor, vote)).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // With node 2's real key the same request is answered, and the reply is authentic.
    let req = genuine.request("status", 1, 0, data.clone()).unwrap();
    let reply =
        status(ticketed(&genuine, req.clone())).await.expect("a member's frame is let in").into_inner();
    genuine.accept_reply("status", 1, req.nonce, &reply).expect("the reply is node 1's");
    // The same frame again (with a fresh ticket) is a replay.
    let e = status(ticketed(&genuine, req)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("replay"), "{e:?}");
    // The refusals are in node 1's log, and the cluster is unaffected.
    assert!(c.log_text(1).contains("refused an internal request"));
    assert_eq!(call(&c, &c.token, Method::PUT, "/v1/kv/default/after", Some("v")).await, 200);
}

/// Optional request signing (a token bound to a client key): unsigned, altered, stale and
/// replayed requests are refused with 401 — and each refusal is in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_signed_request_is_refused_and_audited() {
    let mut c = Cluster::init(1, "a", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let key_file = c.cluster_dir().join("app.key");
    let (ok, out, err) = c.cli(&["keygen", "--out", key_file.to_str().unwrap()]).await;
    assert!(ok, "{out} {err}");
    let pub_file = c.cluster_dir().join("app.key.pub");
    if !pub_file.exists() {
        std::fs::write(&pub_file, out.trim()).unwrap();
    }
    let client = edgefabric_crypto::Identity::read(&key_file).unwrap();
    let token_file = c.token_file();
    let (ok, out, err) = c
        .cli(&[
            "token",
            "issue",
            "--subject",
            "signed-app",
            "--role",
            "writer:default",
            "--client-key",
            pub_file.to_str().unwrap(),
            "--endpoint",
            c.http(1),
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .await;
    assert!(ok, "{out} {err}");
    let token = out.split_whitespace().last().unwrap().to_string();
    let now =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // The documented message: method, host, path and query, date, nonce, hex SHA-256 of the
    // token, hex SHA-256 of the body.
    let host = c.http(1).trim_start_matches("https://").to_string();
    let signed = |method: &str, path: &str, date: u64, nonce: &str, body: &[u8]| {
        sign_request(&client, method, &host, path, date, nonce, &token, body)
    };
    let send = |method: Method, path: &str, date: u64, nonce: &str, sig: Option<String>, body: &str| {
        let mut req = c.client.request(method, format!("{}{path}", c.http(1))).bearer_auth(&token);
        if let Some(sig) = sig {
            req = req
                .header("X-EF-Date", date.to_string())
                .header("X-EF-Nonce", nonce)
                .header("X-EF-Signature", sig);
        }
        let req = req.body(body.to_string());
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let path = "/v1/kv/default/signed?cas=0";
    // Unsigned: the token alone is not enough.
    let (s, text) = send(Method::PUT, path, 0, "", None, "v1").await;
    assert_eq!(s, 401, "{text}");
    assert!(text.contains("must be signed"), "{text}");
    // Signed: accepted.
    let (date, nonce) = (now(), "nonce-0000000001");
    let sig = signed("PUT", path, date, nonce, b"v1");
    let (s, text) = send(Method::PUT, path, date, nonce, Some(sig.clone()), "v1").await;
    assert_eq!(s, 200, "{text}");
    // The very same request again: a replay.
    let (s, text) = send(Method::PUT, path, date, nonce, Some(sig.clone()), "v1").await;
    assert_eq!(s, 401, "{text}");
    assert!(text.contains("replayed"), "{text}");
    // The signature over one body does not cover another, nor another key.
    let (s, _) = send(
        Method::PUT,
        "/v1/kv/default/other",
        date,
        "nonce-0000000002",
        Some(signed("PUT", path, date, "nonce-0000000002", b"v1")),
        "v1",
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = send(
        Method::PUT,
        path,
        date,
        "nonce-0000000003",
        Some(signed("PUT", path, date, "nonce-0000000003", b"v1")),
        "tampered",
    )
    .await;
    assert_eq!(s, 401);
    // Signed long ago: refused however well signed.
    let old = now() - 120_000;
    let (s, text) = send(
        Method::PUT,
        path,
        old,
        "nonce-0000000004",
        Some(signed("PUT", path, old, "nonce-0000000004", b"v1")),
        "v1",
    )
    .await;
    assert_eq!(s, 401);
    assert!(text.contains("clock"), "{text}");
    // A fresh nonce and a fresh signature work again (and the value was written once: cas=0
    // now fails with 409, not 401).
    let (date, nonce) = (now(), "nonce-0000000005");
    let (s, text) =
        send(Method::PUT, path, date, nonce, Some(signed("PUT", path, date, nonce, b"v1")), "v1").await;
    assert_eq!(s, 409, "{text}");
    // The refusals, the replay included, are in the audit trail under the token's subject.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .client
            .get(format!("{}/v1/audit?actor=signed-app&result=denied&limit=100", c.http(1)))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        let records = v["records"].as_array().cloned().unwrap_or_default();
        // Unsigned, replay, wrong path, tampered body, stale.
        if records.len() >= 5 {
            assert_eq!(records.len(), 5, "{records:?}");
            assert!(records.iter().all(|r| r["status"] == 401 && r["action"] == "kv.put"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "denied records never arrived: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Over gRPC (no request signing there yet) the key-bound token does not work at all.
    let mut kv = grpc::kv_client::KvClient::new(c.grpc_channel(1).await);
    let req = grpc::GetRequest { ns: "default".into(), key: "signed".into(), stale: false };
    assert_eq!(kv.get(with(&token, req)).await.unwrap_err().code(), tonic::Code::Unauthenticated);
}

/// The documented signed-request message (README, "Signed requests"), signed by `client`.
#[allow(clippy::too_many_arguments)]
fn sign_request(
    client: &edgefabric_crypto::Identity,
    method: &str,
    host: &str,
    path: &str,
    date: u64,
    nonce: &str,
    token: &str,
    body: &[u8],
) -> String {
    use base64::Engine;
    let hex = |b: &[u8]| edgefabric_crypto::sha256(b).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let msg = format!(
        "edgefabric-request-v2\n{method}\n{host}\n{path}\n{date}\n{nonce}\n{}\n{}\n",
        hex(token.as_bytes()),
        hex(body)
    );
    base64::engine::general_purpose::STANDARD.encode(client.sign(msg.as_bytes()))
}

/// A signed request names the node it is for (defect e): replayed to another node of the
/// cluster within the window — whose nonce cache never saw it — it is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_cannot_be_replayed_to_another_node() {
    let mut c = Cluster::init(2, "a,b", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let key_file = c.cluster_dir().join("app.key");
    let (ok, out, err) = c.cli(&["keygen", "--out", key_file.to_str().unwrap()]).await;
    assert!(ok, "{out} {err}");
    let client = edgefabric_crypto::Identity::read(&key_file).unwrap();
    let pub_file = c.cluster_dir().join("app.key.pub");
    let token_file = c.token_file();
    let (ok, out, err) = c
        .cli(&[
            "token",
            "issue",
            "--subject",
            "signed-app",
            "--role",
            "writer:default",
            "--client-key",
            pub_file.to_str().unwrap(),
            "--endpoint",
            c.http(1),
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .await;
    assert!(ok, "{out} {err}");
    let token = out.split_whitespace().last().unwrap().to_string();
    let node1 = c.http(1).trim_start_matches("https://").to_string();
    let date = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (path, nonce) = ("/v1/kv/default/replayed", "nonce-cross-node-01");
    let sig = sign_request(&client, "PUT", &node1, path, date, nonce, &token, b"v");
    let headers = format!("X-EF-Date: {date}\r\nX-EF-Nonce: {nonce}\r\nX-EF-Signature: {sig}\r\n");
    // The very bytes sent to node 1, Host header and all, captured and sent to node 2 first.
    let (status, text) = raw_request(&c, 2, "PUT", path.as_bytes(), &node1, &token, &headers, b"v").await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("not this node"), "{text}");
    // Node 1, which it was made for, takes it.
    let (status, text) = raw_request(&c, 1, "PUT", path.as_bytes(), &node1, &token, &headers, b"v").await;
    assert_eq!(status, 200, "{text}");
    // Signed for node 2's name but sent to node 1 (or the other way round): refused.
    let node2 = c.http(2).trim_start_matches("https://").to_string();
    let sig = sign_request(&client, "PUT", &node2, path, date, "nonce-cross-node-02", &token, b"v");
    let headers =
        format!("X-EF-Date: {date}\r\nX-EF-Nonce: nonce-cross-node-02\r\nX-EF-Signature: {sig}\r\n");
    let (status, _) = raw_request(&c, 1, "PUT", path.as_bytes(), &node1, &token, &headers, b"v").await;
    assert_eq!(status, 401);
    let (status, text) = raw_request(&c, 2, "PUT", path.as_bytes(), &node2, &token, &headers, b"v").await;
    assert_eq!(status, 200, "{text}");
}

/// Revocations (issue 18, defect c): a `publisher` token cannot revoke as the admin (an
/// unsigned revocation, which the node would sign); a publisher revokes only its own images,
/// with its own signature; the admin revokes anything. Publisher keys of small order are
/// refused (defect i).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_revokes_without_a_publishers_signature() {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use edgefabric_ledger::entry::{image_message, revocation_message};
    let mut c = Cluster::init(1, "a", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let admin = c.token.clone();
    let acme = edgefabric_crypto::Identity::generate().unwrap();
    let evil = edgefabric_crypto::Identity::generate().unwrap();
    for (id, key) in [("acme", &acme), ("evil", &evil)] {
        let body = serde_json::json!({"id": id, "public_key": key.public_key().to_base64()}).to_string();
        assert_eq!(call(&c, &admin, Method::POST, "/v1/publishers", Some(&body)).await, 201, "{id}");
    }
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let body = serde_json::json!({"id": "weak", "public_key": STANDARD.encode(weak)}).to_string();
    let r = c
        .client
        .post(format!("{}/v1/publishers", c.http(1)))
        .bearer_auth(&admin)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("small-order"));

    let digest = format!("sha256:{}", "cd".repeat(32));
    let sig = STANDARD.encode(acme.sign(&image_message("app:1", &digest)));
    let body = serde_json::json!({"name": "app:1", "digest": digest, "publisher": "acme", "signature": sig});
    assert_eq!(call(&c, &admin, Method::POST, "/v1/images", Some(&body.to_string())).await, 201);
    let publisher = c.issue_token("store", "publisher").await;
    let status = || async {
        let r = c.client.get(format!("{}/v1/images/{digest}", c.http(1))).send().await.unwrap();
        r.json::<serde_json::Value>().await.unwrap()["status"].as_str().unwrap().to_string()
    };
    let revoke = format!("/v1/images/{digest}/revoke");
    // Unsigned by a publisher token: the admin's act, refused.
    assert_eq!(call(&c, &publisher, Method::POST, &revoke, Some(r#"{"reason":"x"}"#)).await, 403);
    assert_eq!(
        call(&c, &publisher, Method::POST, &revoke, Some(r#"{"reason":"x","signature":null}"#)).await,
        403
    );
    // Signed by another publisher: the ledger's rules refuse it.
    let by_evil = serde_json::json!({
        "reason": "x", "publisher": "evil",
        "signature": STANDARD.encode(evil.sign(&revocation_message(&digest, "x"))),
    });
    let got = call(&c, &publisher, Method::POST, &revoke, Some(&by_evil.to_string())).await;
    assert!((400..500).contains(&got), "another publisher's revocation: {got}");
    // Over gRPC, the same.
    let mut ledger = grpc::ledger_client::LedgerClient::new(c.grpc_channel(1).await);
    let req = grpc::RevokeImageRequest { digest: digest.clone(), reason: "x".into(), ..Default::default() };
    let e = ledger.revoke_image(with(&publisher, req.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert_eq!(status().await, "registered");
    // The image's own publisher, signed: revoked.
    let by_acme = serde_json::json!({
        "reason": "CVE", "publisher": "acme",
        "signature": STANDARD.encode(acme.sign(&revocation_message(&digest, "CVE"))),
    });
    assert_eq!(call(&c, &publisher, Method::POST, &revoke, Some(&by_acme.to_string())).await, 200);
    assert_eq!(status().await, "revoked");
    // The admin, unsigned, revokes another image.
    let d2 = format!("sha256:{}", "ef".repeat(32));
    let sig = STANDARD.encode(acme.sign(&image_message("app:2", &d2)));
    let body = serde_json::json!({"name": "app:2", "digest": d2, "publisher": "acme", "signature": sig});
    assert_eq!(call(&c, &admin, Method::POST, "/v1/images", Some(&body.to_string())).await, 201);
    let r2 = format!("/v1/images/{d2}/revoke");
    assert_eq!(call(&c, &admin, Method::POST, &r2, Some(r#"{"reason":"pulled"}"#)).await, 200);
}

/// Paths the router decodes (defect b): raw UTF-8 right after `%` once panicked in the
/// authorization layer (the connection dropped, nothing audited). Now every odd path gets an
/// HTTP answer, and the key authorized and audited is the key served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_percent_encodings_get_answers_not_dropped_connections() {
    let mut c = Cluster::init(1, "a", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    // `%+0` is a literal key, stored and read under that name.
    assert_eq!(call(&c, &c.token, Method::PUT, "/v1/kv/default/%+0", Some("v")).await, 200);
    let r = c
        .client
        .get(format!("{}/v1/kv/default/%25%2B0", c.http(1)))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the key is `%+0`");
    // Raw bytes in the path need a raw request: reqwest would encode them.
    let raw = |path: &'static [u8]| raw_get(&c, path);
    let status = raw(b"/v1/kv/default/%\xe2\x82\xac").await;
    assert_eq!(status, 404, "GET /v1/kv/default/%€ answers (no such key)");
    let status = raw(b"/v1/kv/default/%FF").await;
    assert_eq!(status, 400, "not UTF-8 once decoded");
}

/// Issue 18, defect d in general: authorization is declared with each route and reads the
/// namespace the router decoded for the handler, never a second reading of the path. A
/// percent-encoded namespace was authorized as written (`de%66ault`) and served as decoded
/// (`default`): a `writer:default` token got 403 for its own namespace, and a role naming the
/// encoded form would have been checked against a namespace it did not name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_authorized_as_the_handler_reads_it() {
    let mut c = Cluster::init(1, "a", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let writer = c.issue_token("app-1", "writer:default").await;
    let other = c.issue_token("app-2", "writer:other").await;
    assert_eq!(call(&c, &writer, Method::PUT, "/v1/kv/de%66ault/k", Some("v")).await, 200);
    let r = c.client.get(format!("{}/v1/kv/default/k", c.http(1))).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "v", "written where it was authorized");
    assert_eq!(call(&c, &other, Method::PUT, "/v1/kv/de%66ault/k", Some("x")).await, 403);
    assert_eq!(call(&c, &other, Method::GET, "/v1/kv/%64efault/k", None).await, 403);
    // A batch is authorized by the operations the handler runs: every one of them. (One key, so
    // that the batch stays in one shard.)
    let ops = |ns2: &str| {
        format!(
            r#"{{"ops":[{{"op":"put","ns":"default","key":"b1","value_base64":"eA=="}},{{"op":"delete","ns":"{ns2}","key":"b1"}}]}}"#
        )
    };
    assert_eq!(call(&c, &writer, Method::POST, "/v1/batch", Some(&ops("default"))).await, 200);
    assert_eq!(call(&c, &writer, Method::POST, "/v1/batch", Some(&ops("other"))).await, 403);
    // A field given twice is refused, never read one way by the check and another by the write.
    let twice = r#"{"ops":[{"op":"put","ns":"other","ns":"default","key":"b3","value_base64":"eA=="}]}"#;
    assert_eq!(call(&c, &writer, Method::POST, "/v1/batch", Some(twice)).await, 400);
    assert_eq!(call(&c, &other, Method::POST, "/v1/batch", Some(twice)).await, 400);
}

/// Sends `GET path` with the admin token over TLS as raw bytes; the answer's status.
async fn raw_get(c: &Cluster, path: &[u8]) -> u16 {
    let host = c.http(1).trim_start_matches("https://").to_string();
    raw_request(c, 1, "GET", path, &host, &c.token, "", b"").await.0
}

/// One HTTP/1.1 request written byte for byte over TLS to node `to`, with `host` as its Host
/// header and `extra` headers (each ending in CRLF); the status and the whole answer.
#[allow(clippy::too_many_arguments)]
async fn raw_request(
    c: &Cluster,
    to: u64,
    method: &str,
    path: &[u8],
    host: &str,
    token: &str,
    extra: &str,
    body: &[u8],
) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = std::fs::read(c.cluster_dir().join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(&ca).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(edgefabric_crypto::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = c.http(to).trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    let mut req = format!("{method} ").into_bytes();
    req.extend_from_slice(path);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(body);
    tls.write_all(&req).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(text.starts_with("HTTP/1.1 "), "no HTTP answer: {text:?}");
    (text[9..12].parse().unwrap(), text)
}
