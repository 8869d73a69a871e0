//! The dashboard in a real browser: Debian's headless Chromium, driven over WebDriver
//! (chromedriver) with `fantoccini`, against a server with a simulated fleet that ran a
//! good canary rollout to its last phase and a bad one its breaker halted. The test reads what
//! a person sees (text, the plot, buttons), acts as one (sign in, pause with the
//! confirmation, sign out), checks the CSRF and origin refusals of forged posts, and
//! saves a screenshot of every page under `<target>/ui-screenshots/`.

use crate::fleet::{require_mqtt, services_required, unique, wait_for, Server, SimFleet};
use fantoccini::{Client, ClientBuilder, Locator};
use ota_tests::synthetic;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the screenshots go: `<target>/ui-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("ui-screenshots")
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Headless Chromium under chromedriver, stopped when dropped.
struct Browser {
    client: Client,
    driver: Child,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and a Chromium session; `None` (or a failure
    /// under `CI=true`) when either program is missing.
    async fn start() -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (on_path("chromium"), on_path("chromedriver"))
        else {
            assert!(
                !services_required(),
                "chromium and chromedriver are required for the dashboard test; \
                 deploy/services.sh installs them"
            );
            eprintln!("SKIPPED: chromium or chromedriver missing; run deploy/services.sh");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        wait_for("chromedriver to listen", 30, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                // --no-sandbox: the tests run as root.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots).unwrap();
        Some(Browser {
            client,
            driver,
            shots,
        })
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    /// The whole page's visible text.
    async fn text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .expect("a body")
            .text()
            .await
            .expect("its text")
    }

    async fn text_of(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} is on the page: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} is on the page: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{css} can be clicked: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn script(&self, source: &str) -> Value {
        self.client
            .execute(source, Vec::new())
            .await
            .expect("the script runs")
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn sign_in(&self, server: &Server, token: &str) {
        self.goto(&format!("{}/ui/login", server.url)).await;
        self.type_into("#token", token).await;
        self.click("form[action='/ui/login'] button[type=submit]")
            .await;
        self.text_of("nav .who").await;
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn rollout_state(server: &Server, id: &str) -> String {
    let rollout = server
        .ok("GET", &format!("/api/v1/rollouts/{id}"), None)
        .await;
    rollout["state"].as_str().unwrap_or_default().to_owned()
}

/// A good canary rollout that every vehicle commits, a bad one halted by its breaker, and an idle
/// one (a hardware id no vehicle has) that stays running for the actions.
struct Scenario {
    hardware_id: String,
    good: String,
    bad: String,
    idle: String,
}

async fn scenario(server: &Server, vehicles: usize) -> (Scenario, SimFleet) {
    let hardware_id = unique("hw-ui-");
    let v1 = synthetic::image(31, 16 * 1024);
    let v2 = synthetic::next_release(&v1, 32, 8);
    let v3 = synthetic::next_release(&v2, 33, 8);
    // Every vehicle's 3.0.0 fails its health check: the bad release.
    let fleet =
        SimFleet::on_first_release(server, &hardware_id, vehicles, &v1, (1.0, Some("3.0.0"))).await;
    let canary = json!({
        // Half the fleet per band: each holds the minimum executed count.
        "phases": [{ "name": "canary", "percent": 50 }, { "name": "all", "percent": 100 }],
        "abort_criteria": { "min_number_of_executed_things": 2, "threshold_percentage": 20,
                            "action": "rollback" },
    });
    let image = server.upload(&hardware_id, "2.0.0", v2).await;
    let release = server.release(&image, "2.0.0", 1).await;
    let good = server
        .rollout_with(&release, &hardware_id, canary.clone())
        .await;
    wait_for("every vehicle to commit 2.0.0", 300, || async {
        let totals = server.totals(&good).await;
        (totals["committed"] == vehicles as u64).then_some(())
    })
    .await;
    let image = server.upload(&hardware_id, "3.0.0", v3).await;
    let release = server.release(&image, "3.0.0", 1).await;
    let bad = server.rollout_with(&release, &hardware_id, canary).await;
    wait_for("the breaker to roll the bad release back", 240, || async {
        (rollout_state(server, &bad).await == "rolled_back").then_some(())
    })
    .await;
    let idle_hardware = unique("hw-ui-idle-");
    let image = server
        .upload(&idle_hardware, "9.0.0", synthetic::image(34, 4096))
        .await;
    let release = server.release(&image, "9.0.0", 1).await;
    let idle = server.rollout(&release, &idle_hardware).await;
    (
        Scenario {
            hardware_id,
            good,
            bad,
            idle,
        },
        fleet,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_real_rollout_and_pauses_one_in_a_browser() {
    if !require_mqtt().await {
        return;
    }
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start(2).await;
    let vehicles = 16;
    let (s, fleet) = scenario(&server, vehicles).await;
    let url = &server.url;

    // Signing in: the dashboard sends a stranger to the sign-in page; a wrong token is
    // refused with a message.
    browser.goto(&format!("{url}/ui")).await;
    let here = browser.client.current_url().await.unwrap();
    assert_eq!(
        here.path(),
        "/ui/login",
        "an anonymous visit lands on sign-in"
    );
    browser.type_into("#token", "ota_not-a-token").await;
    browser
        .click("form[action='/ui/login'] button[type=submit]")
        .await;
    let refusal = browser.text_of("#login-error").await;
    assert!(refusal.contains("not accepted"), "{refusal}");
    browser.screenshot("01-sign-in-refused").await;
    browser.sign_in(&server, &server.admin).await;

    // The list: every rollout with its state, phase, breaker and progress; the filter.
    browser.goto(&format!("{url}/ui/rollouts")).await;
    let list = browser.text_of("#rollouts").await;
    assert!(
        list.contains("2 of 2: all"),
        "the good rollout reached its last phase: {list}"
    );
    assert!(
        list.contains("rolled back"),
        "the bad one rolled back: {list}"
    );
    assert!(
        list.contains("running"),
        "the good and idle ones run: {list}"
    );
    assert!(
        list.contains(&format!("{vehicles} of {vehicles} committed")),
        "{list}"
    );
    assert_eq!(browser.count("#rollouts progress").await, 3);
    let links = browser
        .script("return [...document.querySelectorAll('#rollouts tbody th a')].map(a => a.getAttribute('href'))")
        .await;
    let order: Vec<String> = [&s.idle, &s.bad, &s.good]
        .iter()
        .map(|id| format!("/ui/rollouts/{id}"))
        .collect();
    assert_eq!(
        links,
        serde_json::json!(order),
        "newest first, as the caption says"
    );
    browser.screenshot("02-rollouts").await;
    browser
        .goto(&format!("{url}/ui/rollouts?state=rolled_back"))
        .await;
    let filtered = browser.text_of("#rollouts").await;
    assert!(
        filtered.contains("rolled back") && !filtered.contains("running"),
        "the filter keeps the rolled-back rollout only: {filtered}"
    );

    // The good rollout: phases with their counts and cohorts, bytes saved by deltas.
    browser.goto(&format!("{url}/ui/rollouts/{}", s.good)).await;
    let phases = browser.text_of("#phases").await;
    assert!(
        phases.contains("canary") && phases.contains("all"),
        "{phases}"
    );
    let saved = browser.text_of("#bytes-saved").await;
    let status = server
        .ok("GET", &format!("/api/v1/rollouts/{}/status", s.good), None)
        .await;
    let api_saved = status["delta_savings"]["bytes_saved"].as_u64().unwrap_or(0);
    eprintln!(
        "delta savings: {} jobs: {}",
        status["delta_savings"], status["delta_jobs"]
    );
    assert_eq!(
        saved == "0 B",
        api_saved == 0,
        "the page shows the API's delta savings ({saved}): {}",
        status["delta_savings"]
    );
    browser.screenshot("03-rollout-completed").await;

    // The bad rollout: breaker open, the plot drawn with the threshold and transitions.
    browser.goto(&format!("{url}/ui/rollouts/{}", s.bad)).await;
    assert!(browser.text_of("#breaker-state").await.contains("open"));
    assert!(browser
        .text_of("#rollout-state")
        .await
        .contains("rolled back"));
    let drawn = wait_for("Chart.js to draw the failure-ratio plot", 20, || async {
        let drawn = browser
            .script(
                "var c = window.Chart && Chart.getChart(document.getElementById('failure-plot'));\
                 return c ? c.data.datasets[0].data.length : null;",
            )
            .await;
        drawn.as_u64().filter(|&n| n > 0)
    })
    .await;
    assert!(drawn >= 2, "the plot has the finished deployments' ratios");
    let caption = browser.text_of("#plot-caption").await;
    assert!(
        caption.contains("threshold of 20") && caption.contains("breaker open"),
        "the caption names the threshold and the breaker's opening: {caption}"
    );
    let audit = browser.text_of("#audit").await;
    assert!(audit.contains("rollout.breaker"), "{audit}");
    browser.screenshot("04-rollout-breaker-open").await;
    browser
        .script("document.getElementById('failure-plot').scrollIntoView(); return null;")
        .await;
    browser.screenshot("04b-failure-plot").await;

    // Pausing the idle rollout: the button, the confirmation, the engine's change.
    browser.goto(&format!("{url}/ui/rollouts/{}", s.idle)).await;
    browser.click("a.action-pause").await;
    let question = browser.text_of("main h1").await;
    assert!(question.starts_with("Pause rollout"), "{question}");
    browser.screenshot("05-confirm-pause").await;
    browser.click("#confirm").await;
    let state = browser.text_of("#rollout-state").await;
    assert_eq!(state, "paused", "the page shows the paused rollout");
    assert_eq!(rollout_state(&server, &s.idle).await, "paused");

    // Live: a change made elsewhere shows up without reloading the page.
    browser
        .script("window.notReloaded = true; return null;")
        .await;
    server
        .ok("POST", &format!("/api/v1/rollouts/{}/resume", s.idle), None)
        .await;
    wait_for(
        "the live section to show the resumed rollout",
        20,
        || async {
            let state = browser
                .script("return document.getElementById('rollout-state').textContent.trim();")
                .await;
            (state == "running").then_some(())
        },
    )
    .await;
    assert_eq!(
        browser.script("return window.notReloaded === true;").await,
        Value::Bool(true),
        "the refresh swapped the section in place"
    );

    // A forged form: the CSRF token altered in the page is refused, nothing changes.
    browser.click("a.action-abort").await;
    browser
        .script("document.querySelector('form[action$=abort] input[name=csrf]').value = 'forged'; return null;")
        .await;
    browser.click("#confirm").await;
    let refused = browser.text_of("main [role=alert]").await;
    assert!(refused.contains("CSRF token"), "{refused}");
    browser.screenshot("06-forged-post-refused").await;
    assert_eq!(rollout_state(&server, &s.idle).await, "running");
    // Outside the browser: the right cookie and token from another origin, and the
    // right origin without the token, are both refused; with both it goes through.
    let csrf = ota_server::ui::session::csrf_token(&server.admin);
    let post = |origin: &'static str, csrf: String| {
        server
            .http
            .post(format!("{url}/ui/rollouts/{}/pause", s.idle))
            .header("cookie", format!("ota_ui_session={}", server.admin))
            .header("origin", origin.replace("SELF", url))
            .form(&[("csrf", csrf)])
            .send()
    };
    let cross = post("http://evil.example", csrf.clone()).await.unwrap();
    assert_eq!(
        cross.status().as_u16(),
        403,
        "a cross-origin post is refused"
    );
    let tokenless = post("SELF", String::new()).await.unwrap();
    assert_eq!(
        tokenless.status().as_u16(),
        403,
        "a post without the token is refused"
    );
    assert_eq!(rollout_state(&server, &s.idle).await, "running");

    // Releases and images; vehicles: search by id, one vehicle's images and events.
    browser.goto(&format!("{url}/ui/releases")).await;
    let releases = browser.text().await;
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        assert!(releases.contains(version), "{version} listed: {releases}");
    }
    let deltas = browser.text_of("#deltas").await;
    assert!(
        deltas.contains("1.0.0 → 2.0.0") && deltas.contains("done"),
        "{deltas}"
    );
    browser.screenshot("07-releases").await;
    let vehicles = server
        .ok(
            "GET",
            &format!("/api/v1/vehicles?hardware_id={}&limit=1", s.hardware_id),
            None,
        )
        .await;
    let vehicle = vehicles["items"][0]["id"].as_str().unwrap().to_owned();
    browser.goto(&format!("{url}/ui/vehicles")).await;
    browser.type_into("#vehicle-id", &vehicle).await;
    browser.click("form[role=search] button[type=submit]").await;
    let ecus = browser.text_of("#ecus").await;
    assert!(
        ecus.contains("2.0.0"),
        "the vehicle runs 2.0.0 again: {ecus}"
    );
    let page = browser.text().await;
    assert!(
        page.contains("committed") && page.contains("Events"),
        "{page}"
    );
    browser.screenshot("08-vehicle").await;

    // Sign out; a read-only token sees the rollout but no action.
    browser.click("form[action='/ui/logout'] button").await;
    browser.text_of("#token").await;
    let here = browser.client.current_url().await.unwrap();
    assert_eq!(here.path(), "/ui/login", "signed out");
    browser.sign_in(&server, &server.reader).await;
    browser.goto(&format!("{url}/ui/rollouts/{}", s.idle)).await;
    assert_eq!(
        browser.count(".actions a").await,
        0,
        "no action for a reader"
    );
    let page = browser.text().await;
    assert!(
        page.contains("needs a token with the rollout:write scope"),
        "{page}"
    );
    browser.screenshot("09-read-only").await;

    browser.stop().await;
    fleet.stop().await;
    server.stop().await;
}
