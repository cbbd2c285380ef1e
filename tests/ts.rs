//! Time series end to end on a real 3-node cluster: line-protocol ingest through one node,
//! Prometheus HTTP API queries through another (what Grafana's Prometheus data source sends),
//! all-or-nothing batches, authorization, and samples surviving a kill -9.

mod common;

use std::time::Duration;

use common::Cluster;
use edgefabric_tsdb::codec;
use reqwest::Method;
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
/// 2023-11-14T22:13:20Z, in seconds.
const T0: i64 = 1_700_000_000;

fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn prom(c: &Cluster, via: u64, token: &str, path_and_query: &str) -> (u16, Value) {
    let r = c.call(via, Some(token), Method::GET, path_and_query, vec![], None).await;
    (r.status, r.json())
}

/// `name{labels}` → value of an instant vector result.
fn vector(v: &Value) -> Vec<(String, f64)> {
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["data"]["resultType"], "vector", "{v}");
    let mut out: Vec<(String, f64)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let m = r["metric"].as_object().unwrap();
            let labels: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap())).collect();
            (labels.join(","), r["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_in_prometheus_api_out() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let writer = c.issue_token("collector", "writer:default").await;
    let reader = c.issue_token("grafana", "reader:default").await;

    // Two hosts, a gauge and a counter, every 10 s for 5 minutes (31 points), precision s.
    let mut body = String::new();
    for i in 0..=30 {
        let t = T0 + i * 10;
        for (host, base) in [("a", 10.0), ("b", 20.0)] {
            body.push_str(&format!(
                "cpu,host={host},dc=x usage_user={},usage_idle={}i,ok=true {t}\nhttp,host={host} requests={}i {t}\n",
                base + i as f64 * 0.5,
                90 - i,
                i * 50
            ));
        }
    }
    let r = c
        .call(1, Some(&writer), Method::POST, "/v1/ts/write?ns=default&precision=s", body.into(), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    // An instant query through another node, at the last point.
    let t_end = T0 + 300;
    let (s, v) =
        prom(&c, 2, &reader, &format!("/api/v1/query?query={}&time={t_end}", q("cpu_usage_user"))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        vector(&v),
        vec![
            ("__name__=cpu_usage_user,dc=x,host=a".to_string(), 25.0),
            ("__name__=cpu_usage_user,dc=x,host=b".to_string(), 35.0)
        ]
    );
    // Integers and booleans are numbers too; the lookback finds the last sample 4 minutes on.
    let (_, v) = prom(
        &c,
        3,
        &reader,
        &format!("/api/v1/query?query={}&time={}", q("cpu_ok + cpu_usage_idle"), t_end + 240),
    )
    .await;
    assert_eq!(vector(&v), vec![("dc=x,host=a".to_string(), 61.0), ("dc=x,host=b".to_string(), 61.0)]);
    // A counter's rate: 50 per 10 s.
    let (_, v) = prom(
        &c,
        2,
        &reader,
        &format!("/api/v1/query?query={}&time={t_end}", q("sum(rate(http_requests[1m]))")),
    )
    .await;
    assert_eq!(vector(&v), vec![(String::new(), 10.0)]);

    // A range query, as Grafana sends it: a form POST with the namespace in the body.
    let form =
        format!("query={}&start={T0}&end={t_end}&step=60&ns=default", q("max by (host) (cpu_usage_user)"));
    let r = c
        .call(
            3,
            Some(&reader),
            Method::POST,
            "/api/v1/query_range",
            form.into(),
            Some("application/x-www-form-urlencoded"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"]["resultType"], "matrix");
    let a = &v["data"]["result"][0];
    assert_eq!(a["metric"], serde_json::json!({"host": "a"}));
    let values: Vec<(i64, String)> = a["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(i64, String)> =
        (0..=5).map(|k| (T0 + 60 * k, format!("{}", 10.0 + 3.0 * k as f64))).collect();
    assert_eq!(values, want);

    // Classic histograms: `le` buckets in, quantiles out.
    let buckets = [("0.1", 10), ("0.5", 30), ("1", 40), ("+Inf", 50)]
        .iter()
        .map(|(le, n)| format!("req,le={le},path=/a duration_bucket={n}i {t_end}\n"))
        .collect::<String>();
    let r = c.call(1, Some(&writer), Method::POST, "/v1/ts/write?precision=s", buckets.into(), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let hq = q("histogram_quantile(0.5, req_duration_bucket)");
    let (_, v) = prom(&c, 2, &reader, &format!("/api/v1/query?query={hq}&time={t_end}")).await;
    let got = vector(&v);
    assert_eq!(got.len(), 1, "{v}");
    assert_eq!(got[0].0, "path=/a");
    assert!((got[0].1 - 0.4).abs() < 1e-9, "{v}");
    let (s, v) = prom(&c, 3, &reader, "/api/v1/metadata").await;
    assert_eq!((s, v["data"].clone()), (200, serde_json::json!({})));

    let (s, v) = prom(&c, 3, &reader, "/api/v1/status/buildinfo").await;
    assert_eq!((s, v["data"]["application"].as_str()), (200, Some("EdgeFabric")), "{v}");
    // What else Grafana asks: exemplars (none stored), rules and alerts (none evaluated).
    let (s, v) = prom(&c, 3, &reader, &format!("/api/v1/query_exemplars?query={}", q("cpu"))).await;
    assert_eq!((s, v["status"].as_str(), v["data"].clone()), (200, Some("success"), serde_json::json!([])));
    let (s, v) = prom(&c, 3, &reader, "/api/v1/rules").await;
    assert_eq!((s, v["data"].clone()), (200, serde_json::json!({"groups": []})));
    let (s, v) = prom(&c, 3, &reader, "/api/v1/alerts").await;
    assert_eq!((s, v["data"].clone()), (200, serde_json::json!({"alerts": []})));

    // `edgefabric ts write` from a file; a bad file is refused with its line.
    let lp = c.cluster_dir().join("extra.lp");
    std::fs::write(&lp, format!("disk,host=a free=7i {t_end}\n")).unwrap();
    let token_file = c.token_file();
    let lp_path = lp.display().to_string();
    let args = [
        "ts",
        "write",
        "--precision",
        "s",
        "--endpoint",
        c.http(2),
        "--token-file",
        token_file.to_str().unwrap(),
        &lp_path,
    ];
    let (ok, out, err) = c.cli(&args).await;
    assert!(ok && out.contains("written"), "{out} {err}");
    let (_, v) = prom(&c, 1, &reader, &format!("/api/v1/query?query=disk_free&time={t_end}")).await;
    assert_eq!(vector(&v), vec![("__name__=disk_free,host=a".to_string(), 7.0)]);
    std::fs::write(&lp, "disk,host=a free=\n").unwrap();
    let (ok, _, err) = c.cli(&args).await;
    assert!(!ok && err.contains("line 1"), "{err}");

    // Flush (admin only) cuts every head into chunks and reports what they take.
    let r = c.call(1, Some(&reader), Method::POST, "/v1/ts/flush", vec![], None).await;
    assert_eq!(r.status, 403);
    let r = c.call(1, Some(&c.token), Method::POST, "/v1/ts/flush", vec![], None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let f = r.json();
    assert!(f["series"].as_u64().unwrap() >= 6 && f["chunk_bytes"].as_u64().unwrap() > 0, "{f}");
    let (_, v) = prom(
        &c,
        2,
        &reader,
        &format!("/api/v1/query?query={}&time={t_end}", q("count_over_time(cpu_usage_user[10m])")),
    )
    .await;
    assert_eq!(vector(&v).len(), 2, "still readable after the flush: {v}");

    // Metadata routes.
    let (_, v) = prom(&c, 1, &reader, &format!("/api/v1/series?match[]={}", q("{host=\"a\"}"))).await;
    let names: Vec<&str> =
        v["data"].as_array().unwrap().iter().map(|m| m["__name__"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["cpu_ok", "cpu_usage_idle", "cpu_usage_user", "disk_free", "http_requests"]);
    let (_, v) = prom(&c, 2, &reader, "/api/v1/labels").await;
    assert_eq!(v["data"], serde_json::json!(["__name__", "dc", "host", "le", "path"]));
    // (disk_free came through the CLI above)
    let (_, v) = prom(&c, 3, &reader, "/api/v1/label/host/values").await;
    assert_eq!(v["data"], serde_json::json!(["a", "b"]));
    let (_, v) = prom(&c, 3, &reader, "/api/v1/label/__name__/values?ns=default").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 6);

    // Prometheus-shaped errors.
    let (s, v) = prom(&c, 1, &reader, &format!("/api/v1/query?query={}", q("rate(cpu_usage_user)"))).await;
    assert_eq!(
        (s, v["status"].as_str(), v["errorType"].as_str()),
        (400, Some("error"), Some("bad_data")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("expected type range vector"), "{v}");
    // A query nested past the parser's limit is refused; before the limit, it overflowed the
    // thread's stack and aborted the node (node 1 answers the requests below).
    let deep = format!("{}x{}", "abs(".repeat(2_000), ")".repeat(2_000));
    let (s, v) = prom(&c, 1, &reader, &format!("/api/v1/query?query={}", q(&deep))).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("query nests more than 128 levels deep"), "{v}");
    // `timeout`: a malformed one is refused, and a query that runs past it stops with
    // Prometheus's timeout error (a subquery of 360,000 steps, each window sorted).
    let (s, v) = prom(&c, 1, &reader, "/api/v1/query?query=up&timeout=soon").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("invalid parameter \"timeout\""), "{v}");
    // Times and durations past the bounds that keep the evaluator's arithmetic inside i64.
    for (param, bad) in [("lookback_delta", "lookback_delta=293y"), ("time", "time=9e15")] {
        let (s, v) = prom(&c, 1, &reader, &format!("/api/v1/query?query=up&{bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains(&format!("invalid parameter \"{param}\"")), "{v}");
    }
    let heavy = q("quantile_over_time(0.5, cpu_usage_user[1h:10ms])");
    let path =
        format!("/api/v1/query_range?query={heavy}&start={}&end={t_end}&step=60&timeout=1ms", t_end - 600);
    let (s, v) = prom(&c, 1, &reader, &path).await;
    assert_eq!((s, v["errorType"].as_str()), (503, Some("timeout")), "{v}");
    assert_eq!(v["error"], "query timed out in expression evaluation", "{v}");
    let (s, v) = prom(&c, 1, &reader, "/api/v1/query_range?query=up&start=10&end=5&step=1").await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("end timestamp must not be before start time"));
    let (s, v) = prom(&c, 1, &reader, "/api/v1/series").await;
    assert_eq!(s, 400, "{v}");

    // A batch with one bad line is refused whole, naming the line and column.
    let bad = format!("mem,host=a free=1 {T0}\nmem,host=a free=oops {T0}\n");
    let r = c.call(2, Some(&writer), Method::POST, "/v1/ts/write?precision=s", bad.into(), None).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("line 2, column 17"), "{}", r.text());
    let (_, v) = prom(&c, 1, &reader, &format!("/api/v1/query?query=mem_free&time={T0}")).await;
    assert!(vector(&v).is_empty(), "nothing of the refused batch was written: {v}");
    let r = c.call(2, Some(&writer), Method::POST, "/v1/ts/write?precision=h", "m v=1".into(), None).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("precision"), "{}", r.text());

    // Authentication and roles.
    let r = c.call(1, None, Method::GET, "/api/v1/query?query=up", vec![], None).await;
    assert_eq!(r.status, 401);
    let r = c.call(1, Some(&reader), Method::POST, "/v1/ts/write", "m v=1".into(), None).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("writer:default"), "{}", r.text());
    let (s, _) = prom(&c, 1, &writer, "/api/v1/query?query=up&ns=other").await;
    assert_eq!(s, 403);

    // Samples acknowledged to the writer survive a kill -9 of the node that took them.
    let late = format!("cpu,host=a,dc=x usage_user=99 {}\n", t_end + 10);
    let r = c.call(1, Some(&writer), Method::POST, "/v1/ts/write?precision=s", late.into(), None).await;
    assert_eq!(r.status, 204);
    c.kill9(1);
    c.start(1);
    c.wait_ready(READY).await;
    let sel = q("cpu_usage_user{host=\"a\"}");
    let (_, v) = prom(&c, 1, &reader, &format!("/api/v1/query?query={sel}&time={}", t_end + 10)).await;
    assert_eq!(vector(&v), vec![("__name__=cpu_usage_user,dc=x,host=a".to_string(), 99.0)]);
    let (_, v) = prom(
        &c,
        1,
        &reader,
        &format!(
            "/api/v1/query?query={}&time={t_end}",
            q("count_over_time(cpu_usage_user{host=\"a\"}[10m])")
        ),
    )
    .await;
    assert_eq!(vector(&v), vec![("dc=x,host=a".to_string(), 31.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_classes_apply_to_series() {
    // Maintenance only when the test asks (`/v1/ts/maintain`): it compacts sealed blocks.
    let mut c = Cluster::init(3, "a,b,c", |t| common::set_toml(t, &[("maintenance_interval_ms", "3600000")]));
    c.start_all();
    c.wait_ready(READY).await;
    // The test fault route exists only on nodes started with `[test] faults = true`.
    let r = c.request(1, Method::PUT, "/v1/test/faults", Some(b"{}".to_vec())).await.unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    for (ns, cfg) in [
        ("plant", r#"{"class":"site-local","home_site":"a","replicas":1}"#),
        ("vault", r#"{"class":"confidential","key_sites":["a","b"],"replicas":3}"#),
    ] {
        let r = c
            .request(1, Method::PUT, &format!("/v1/namespaces/{ns}"), Some(cfg.as_bytes().to_vec()))
            .await
            .unwrap();
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    }
    // Site-local series: written and read at the home site, refused elsewhere.
    let r = c
        .call(
            1,
            Some(&c.token),
            Method::POST,
            "/v1/ts/write?ns=plant&precision=s",
            format!("t v=1 {T0}").into(),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let (s, v) = prom(&c, 1, &c.token, &format!("/api/v1/query?ns=plant&query=t_v&time={T0}")).await;
    assert_eq!((s, vector(&v).len()), (200, 1), "{v}");
    let (s, v) = prom(&c, 2, &c.token, &format!("/api/v1/query?ns=plant&query=t_v&time={T0}")).await;
    assert_eq!(s, 403, "site-local series were readable at another site: {v}");

    // Confidential series: sealed by the key site that takes them, so every replica (the third
    // site's too) holds only ciphertext; readable and writable at key sites only.
    let secret: Vec<(i64, f64)> = (0..200).map(|i| ((T0 + i) * 1000, 123456.789 + i as f64 * 0.5)).collect();
    let open: Vec<(i64, f64)> = (0..200).map(|i| ((T0 + i) * 1000, 654321.125 + i as f64 * 0.5)).collect();
    let lines = |name: &str, s: &[(i64, f64)]| -> String {
        s.iter().map(|(t, v)| format!("{name},room=r1 v={v} {}\n", t / 1000)).collect()
    };
    let r = write_lp(&c, 1, "vault", lines("secret", &secret)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = write_lp(&c, 1, "default", lines("open", &open)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let series = "__name__=secret_v,room=r1".to_string();
    // Read at the other key site: the last sample, and all of them.
    let (s, v) = vault_at(&c, 2, "secret_v", T0 + 199).await;
    assert_eq!((s, vector(&v)), (200, vec![(series.clone(), 123456.789 + 199.0 * 0.5)]));
    let (_, v) = vault_at(&c, 2, "sum_over_time(secret_v[10m])", T0 + 199).await;
    let sum: f64 = secret.iter().map(|s| s.1).sum();
    let got = vector(&v);
    // PromQL sums compensated (Kahan), an iterator plainly: equal to rounding.
    assert_eq!((got.len(), got[0].0.as_str()), (1, "room=r1"));
    assert!((got[0].1 - sum).abs() < sum * 1e-12, "{} != {sum}", got[0].1);
    // A later write of a timestamp wins, as for plain series (blocks merge in batch order).
    assert_eq!(write_lp(&c, 2, "vault", format!("secret,room=r1 v=1 {}", T0 + 199)).await.status, 204);
    let (_, v) = vault_at(&c, 1, "secret_v", T0 + 199).await;
    assert_eq!(vector(&v), vec![(series.clone(), 1.0)]);
    let (_, v) = vault_at(&c, 1, "count_over_time(secret_v[10m])", T0 + 199).await;
    assert_eq!(vector(&v), vec![("room=r1".to_string(), 200.0)]);
    // Labels are in clear (they route and index series, as KV keys do), at key sites only.
    let (s, v) = prom(&c, 1, &c.token, &format!("/api/v1/series?ns=vault&match[]={}", q("secret_v"))).await;
    assert_eq!((s, v["data"][0]["room"].as_str()), (200, Some("r1")), "{v}");
    // Outside the key sites: no reads, no writes, no labels.
    let (s, v) = vault_at(&c, 3, "secret_v", T0 + 199).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(write_lp(&c, 3, "vault", format!("secret,room=r1 v=2 {}", T0 + 200)).await.status, 403);
    let (s, _) = prom(&c, 3, &c.token, &format!("/api/v1/series?ns=vault&match[]={}", q("secret_v"))).await;
    assert_eq!(s, 403);

    // No plaintext on any disk: neither the samples as a write batch or a chunk encodes them,
    // nor their text. The same check finds the public series' batch (it can fail).
    let needles = |s: &[(i64, f64)]| vec![codec::encode_fast(s), codec::encode(s)];
    let found = |needle: &[u8]| -> Vec<String> {
        c.ids().into_iter().flat_map(|id| common::files_containing(c.data_dir(id), needle)).collect()
    };
    assert!(!found(&needles(&open)[0]).is_empty(), "the public batch is not on any disk: the check is blind");
    for needle in needles(&secret).iter().chain([&b"123456.789".to_vec(), &b"123556.289".to_vec()]) {
        let leaks = found(needle);
        assert!(leaks.is_empty(), "confidential samples in clear in {leaks:?}");
    }

    // Acknowledged sealed samples survive a kill -9 of the node that sealed them.
    assert_eq!(write_lp(&c, 1, "vault", format!("secret,room=r1 v=7 {}", T0 + 300)).await.status, 204);
    c.kill9(1);
    c.start(1);
    c.wait_ready(READY).await;
    let (_, v) = vault_at(&c, 1, "secret_v", T0 + 300).await;
    assert_eq!(vector(&v), vec![(series.clone(), 7.0)]);

    // A rotation: new samples are sealed under version 2, old blocks stay under 1 and are still
    // read; version 1 cannot be retired while blocks use it.
    let r = c.request(1, Method::POST, "/v1/namespaces/vault/rotate-key", None).await.unwrap();
    assert!(r.status < 300, "{}", r.text());
    assert_eq!(write_lp(&c, 2, "vault", format!("secret,room=r1 v=8 {}", T0 + 301)).await.status, 204);
    let (_, v) = vault_at(&c, 2, "count_over_time(secret_v[10m])", T0 + 301).await;
    assert_eq!(vector(&v), vec![("room=r1".to_string(), 202.0)]);
    let (_, v) = vault_at(&c, 1, "secret_v", T0 + 301).await;
    assert_eq!(vector(&v), vec![(series.clone(), 8.0)]);
    // (No KV values: nothing for the rotation's re-encryption to wait on.)
    let r = c
        .request(1, Method::POST, "/v1/namespaces/vault/retire-key", Some(br#"{"version":1}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("time-series blocks"), "{}", r.text());

    // Compaction at the key sites merges the window's four blocks into one sealed under the
    // newest key: the same samples (the overwrite still wins), and version 1 can go. (The
    // samples are from 2023: a retention that keeps them through the maintenance pass.)
    let r = c
        .request(
            1,
            Method::PUT,
            "/v1/namespaces/vault/retention",
            Some(br#"{"raw":"3650d","rollups":"3650d"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for id in [1, 2, 3] {
        // A read of it through each node waits until that node's replica has it.
        let r = c.request(id, Method::GET, "/v1/namespaces/vault/retention", None).await.unwrap();
        assert_eq!(r.json()["raw_ms"], 3650 * 86_400_000u64, "{}", r.text());
    }
    let mut merges = 0;
    for id in [1, 2, 3] {
        let r = c.request(id, Method::POST, "/v1/ts/maintain", None).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        merges += r.json()["sealed_merges"].as_u64().unwrap();
    }
    assert_eq!(merges, 1);
    let (_, v) = vault_at(&c, 2, "count_over_time(secret_v[10m])", T0 + 301).await;
    assert_eq!(vector(&v), vec![("room=r1".to_string(), 202.0)]);
    for (t, want) in [(T0 + 198, 123456.789 + 198.0 * 0.5), (T0 + 199, 1.0), (T0 + 300, 7.0), (T0 + 301, 8.0)]
    {
        let (_, v) = vault_at(&c, 1, "secret_v", t).await;
        assert_eq!(vector(&v), vec![(series.clone(), want)], "at {t}");
    }
    let r = c
        .request(1, Method::POST, "/v1/namespaces/vault/retire-key", Some(br#"{"version":1}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Nothing left to do: a second pass merges nothing.
    let r = c.request(1, Method::POST, "/v1/ts/maintain", None).await.unwrap();
    assert_eq!(r.json()["sealed_merges"], 0, "{}", r.text());
}

/// Writes line protocol (seconds) into `ns` through node `via`.
async fn write_lp(c: &Cluster, via: u64, ns: &str, body: String) -> common::HttpReply {
    let path = format!("/v1/ts/write?ns={ns}&precision=s");
    c.call(via, Some(&c.token), Method::POST, &path, body.into_bytes(), None).await
}

/// An instant query of the confidential namespace `vault` through node `via`.
async fn vault_at(c: &Cluster, via: u64, query: &str, t: i64) -> (u16, Value) {
    prom(c, via, &c.token, &format!("/api/v1/query?ns=vault&query={}&time={t}", q(query))).await
}

/// Prometheus remote write 1.0, as a Prometheus server or agent sends it (the node's own
/// message types).
use edgefabric::ts::remote;

/// (labels, samples as (ms, value)) of one series.
type RemoteSeries<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)]);

fn remote_body(series: &[RemoteSeries]) -> Vec<u8> {
    use prost::Message;
    let req = remote::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| remote::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| remote::Label { name: n.to_string(), value: v.to_string() })
                    .collect(),
                samples: samples.iter().map(|(t, v)| remote::Sample { value: *v, timestamp: *t }).collect(),
            })
            .collect(),
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

/// A node cut off from every other replica keeps accepting writes into its durable queue,
/// keeps them across a kill -9, and forwards them — each sample once — when the link returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_and_store_and_forward_across_a_cut_off_and_a_restart() {
    let mut c = Cluster::init(3, "a,b,c", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let writer = c.issue_token("prometheus", "writer:default").await;
    let reader = c.issue_token("grafana", "reader:default").await;
    let ms = |s: i64| s * 1000;

    // Remote write while the cluster is whole.
    let up: &[(&str, &str)] = &[("__name__", "up"), ("job", "node"), ("instance", "edge-1:9100")];
    let body = remote_body(&[(up, &[(ms(T0), 1.0), (ms(T0 + 15), 1.0)])]);
    let r =
        c.call(1, Some(&writer), Method::POST, "/api/v1/write", body, Some("application/x-protobuf")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let (_, v) = prom(&c, 2, &reader, &format!("/api/v1/query?query=up&time={}", T0 + 15)).await;
    assert_eq!(vector(&v), vec![("__name__=up,instance=edge-1:9100,job=node".to_string(), 1.0)]);
    // Garbage and series without a name are refused.
    let r = c.call(1, Some(&writer), Method::POST, "/api/v1/write", b"not snappy".to_vec(), None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let nameless: &[(&str, &str)] = &[("job", "x")];
    let r = c
        .call(1, Some(&writer), Method::POST, "/api/v1/write", remote_body(&[(nameless, &[(0, 1.0)])]), None)
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("timeseries[0]: no __name__"), "{}", r.text());
    let r = c
        .call(1, Some(&reader), Method::POST, "/api/v1/write", remote_body(&[(up, &[(0, 1.0)])]), None)
        .await;
    assert_eq!(r.status, 403);
    // A confidential namespace keyed at site a only: its series queue sealed.
    let r = c
        .request(
            1,
            Method::PUT,
            "/v1/namespaces/vault",
            Some(br#"{"class":"confidential","key_sites":["a"],"replicas":3}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());

    // Site a is cut off: the other replicas stop answering.
    c.pause(2);
    c.pause(3);
    let temp: &[(&str, &str)] = &[("__name__", "temp_celsius"), ("sensor", "s1")];
    let mut written = 0;
    for batch in 0..4 {
        let samples: Vec<(i64, f64)> =
            (0..25).map(|i| (ms(T0 + batch * 250 + i * 10), (batch * 25 + i) as f64)).collect();
        written += samples.len();
        let r = c
            .call(1, Some(&writer), Method::POST, "/api/v1/write", remote_body(&[(temp, &samples)]), None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        let queued: Option<u64> = c
            .client
            .get(format!("{}/v1/ts/queue", c.http(1)))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["samples"]
            .as_u64();
        assert_eq!(queued, Some((batch as u64 + 1) * 25), "queued after batch {batch}");
    }
    let secret: Vec<(i64, f64)> = (0..10).map(|i| (ms(T0 + i), 4242.125 + i as f64)).collect();
    let lines: String =
        secret.iter().map(|(t, v)| format!("vitals,bed=7 pulse={v} {}\n", t / 1000)).collect();
    let r = write_lp(&c, 1, "vault", lines).await;
    assert_eq!(r.status, 204, "{}", r.text());
    // The node crashes and comes back while still cut off: the queue is on its disk.
    c.kill9(1);
    c.start(1);
    let token_file = c.token_file();
    let deadline = std::time::Instant::now() + READY;
    let out = loop {
        let (ok, out, err) = c
            .cli(&["ts", "queue", "--endpoint", c.http(1), "--token-file", token_file.to_str().unwrap()])
            .await;
        if ok {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "ts queue: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let backlog: Value = serde_json::from_str(&out).unwrap();
    let queued = written + secret.len();
    assert_eq!(backlog["samples"].as_u64(), Some(queued as u64), "{out}");
    assert!(backlog["parts"].as_u64().unwrap() >= 1);
    let metrics = c.client.get(format!("{}/metrics", c.http(1))).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("\nedgefabric_ts_queued_samples {queued}\n")), "{metrics}");

    // The link returns: the queue drains, and every sample is there exactly once.
    c.resume(2);
    c.resume(3);
    let deadline = std::time::Instant::now() + READY;
    loop {
        let v: Value = c
            .client
            .get(format!("{}/v1/ts/queue", c.http(1)))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["samples"] == 0 {
            assert_eq!(v["too_old"], 0, "{v}");
            // The four plain parts of one shard went in one proposal, the sealed one alone.
            assert_eq!(v["proposals"], 2, "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the queue never drained: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = T0 + 1000;
    let (_, v) = prom(
        &c,
        3,
        &reader,
        &format!("/api/v1/query?query={}&time={end}", q("count_over_time(temp_celsius[20m])")),
    )
    .await;
    assert_eq!(vector(&v), vec![("sensor=s1".to_string(), written as f64)]);
    let (_, v) = prom(
        &c,
        2,
        &reader,
        &format!("/api/v1/query?query={}&time={end}", q("sum_over_time(temp_celsius[20m])")),
    )
    .await;
    let want: f64 = (0..written).map(|i| i as f64).sum();
    assert_eq!(vector(&v), vec![("sensor=s1".to_string(), want)]);
    // The sealed part was forwarded like the others, and opens at the key site.
    let (_, v) = vault_at(&c, 1, "max_over_time(vitals_pulse[20m])", T0 + 20).await;
    assert_eq!(vector(&v), vec![("bed=7".to_string(), 4251.125)]);
    let (_, v) = vault_at(&c, 1, "count_over_time(vitals_pulse[20m])", T0 + 20).await;
    assert_eq!(vector(&v), vec![("bed=7".to_string(), 10.0)]);
    for needle in [codec::encode_fast(&secret), codec::encode(&secret)] {
        let leaks: Vec<String> =
            c.ids().into_iter().flat_map(|id| common::files_containing(c.data_dir(id), &needle)).collect();
        assert!(leaks.is_empty(), "queued confidential samples in clear in {leaks:?}");
    }
}

/// Retention set through the API: raw samples older than it disappear once rolled up, and the
/// 1-hour rollups (`name:1h_count`, ...) answer for those hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_rollups_after_raw_samples_expire() {
    let mut c = Cluster::init(3, "a,b,c", |t| common::set_toml(t, &[("maintenance_interval_ms", "300")]));
    c.start_all();
    c.wait_ready(READY).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let hour = 3600;
    // A gauge every minute from 31 h ago to 1 h ago (aligned to whole hours): hours become
    // final for rollups once the series has samples a day (the out-of-order window) newer.
    let start = (now / hour - 31) * hour;
    let mut body = String::new();
    for i in 0..(30 * 60) {
        body.push_str(&format!("room,id=r1 temp={} {}\n", 20 + i % 5, start + i * 60));
    }
    let r = c.call(1, Some(&c.token), Method::POST, "/v1/ts/write?precision=s", body.into(), None).await;
    assert_eq!(r.status, 204, "{}", r.text());

    // Bad retention settings are refused, naming the field.
    for (body, field) in [
        (r#"{"raw":"30m","rollups":"30d"}"#, "raw"),
        (r#"{"raw":"10d","rollups":"1d"}"#, "rollups"),
        (r#"{"raw":"forever","rollups":"30d"}"#, "raw"),
        (r#"{"raw":"3h","rollups":"30d","extra":1}"#, "extra"),
    ] {
        let r =
            c.request(1, Method::PUT, "/v1/namespaces/default/retention", Some(body.into())).await.unwrap();
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(field), "{body}: {}", r.text());
    }
    let r = c
        .request(
            2,
            Method::PUT,
            "/v1/namespaces/default/retention",
            Some(br#"{"raw":"3h","rollups":"30d"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request(3, Method::GET, "/v1/namespaces/default/retention", None).await.unwrap();
    assert_eq!(r.json()["raw_ms"], 3 * 3_600_000, "{}", r.text());

    // Every replica rolls up and expires on its own; read through each node in turn.
    let deadline = std::time::Instant::now() + READY;
    loop {
        let mut done = true;
        for via in 1..=3 {
            // The 1,800 samples are cut into seven even chunks of about 4.3 hours. Hours 0-5
            // are final (the newest sample is 30 h in, past the 24 h out-of-order window) and
            // rolled up, and the first chunk ends before both the raw retention (3 h ago) and
            // the rolled-up hours: it must go. Retention drops whole chunks, so later hours may
            // keep samples past it.
            let t = start + 3 * hour + 1800;
            let (_, raw) = prom(
                &c,
                via,
                &c.token,
                &format!("/api/v1/query?query={}&time={t}", q("count_over_time(room_temp[1h])")),
            )
            .await;
            let (_, rolled) = prom(
                &c,
                via,
                &c.token,
                &format!("/api/v1/query?query={}&time={}", q("room_temp:1h_count"), start + 3 * hour),
            )
            .await;
            let (_, recent) = prom(
                &c,
                via,
                &c.token,
                &format!(
                    "/api/v1/query?query={}&time={}",
                    q("count_over_time(room_temp[1h])"),
                    start + 29 * hour - 60
                ),
            )
            .await;
            let raw_gone = vector(&raw).is_empty();
            let hour_count = vector(&rolled);
            let recent_count = vector(&recent);
            done &= raw_gone
                && hour_count == vec![("__name__=room_temp:1h_count,id=r1".to_string(), 60.0)]
                && recent_count == vec![("id=r1".to_string(), 60.0)];
            if !done && std::time::Instant::now() > deadline {
                panic!("node {via}: raw {raw} rolled {rolled} recent {recent}");
            }
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Namespace confusion (issue 18, defect d): the authorization layer read `ns` from the query
/// and a form body, the line-protocol handler from the query alone. A body that is both a form
/// naming `ns=mine` and valid line protocol let a `writer:mine` token write into `default`.
/// Now the handler writes where authorization looked, and a write's body is never read as
/// parameters (only the Prometheus read routes take form bodies): such a request is
/// authorized for the query's namespace (`default`), refused, and writes nothing anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lands_in_the_namespace_it_was_authorized_for() {
    let mut c = Cluster::init(1, "a", |t| t);
    c.start_all();
    c.wait_ready(READY).await;
    let r = c
        .request(1, Method::PUT, "/v1/namespaces/mine", Some(br#"{"class":"public"}"#.to_vec()))
        .await
        .unwrap();
    assert!(r.status == 201 || r.status == 200, "{}", r.text());
    let writer = c.issue_token("tenant", "writer:mine").await;
    // A form (`ns=mine`, `m value=1 ...`) that is also one line of line protocol.
    let body = format!("ns=mine&m value=1 {T0}");
    let r = c
        .client
        .post(format!("{}/v1/ts/write?precision=s", c.http(1)))
        .bearer_auth(&writer)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let all =
        format!("/api/v1/series?match[]={}&start={}&end={}", q(r#"{__name__=~".+"}"#), T0 - 60, T0 + 60);
    let c = &c;
    let count = |ns: &str| {
        let path = format!("{all}&ns={ns}");
        async move {
            let (s, v) = prom(c, 1, &c.token, &path).await;
            assert_eq!(s, 200, "{v}");
            v["data"].as_array().unwrap().len()
        }
    };
    assert_eq!(status, 403, "authorized for the query's namespace, default: {text}");
    assert!(text.contains("writer:default"), "{text}");
    assert_eq!(count("default").await, 0, "a writer:mine token wrote into default");
    assert_eq!(count("mine").await, 0, "a body's ns= is data, not a parameter");
    // The plain way works, and the token still cannot write elsewhere.
    let r = c
        .call(
            1,
            Some(&writer),
            Method::POST,
            "/v1/ts/write?ns=mine&precision=s",
            format!("up v=1 {T0}").into_bytes(),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = c
        .call(
            1,
            Some(&writer),
            Method::POST,
            "/v1/ts/write?precision=s",
            format!("up v=1 {T0}").into_bytes(),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(count("mine").await, 1, "the authorized namespace holds the series");
    assert_eq!(count("default").await, 0);
}
