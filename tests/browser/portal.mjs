// The portal in a real browser: headless Debian chromium driven by
// playwright-core. Started by crates/cli/tests/e2e/portal.rs against a lab,
// or by hand:
//
//   PORTAL_URL=http://127.0.0.1:7780 PORTAL_VM=pbx1 PORTAL_SITE=site1 \
//   PORTAL_SERVICE=pbx node tests/browser/portal.mjs
//
// Environment:
//   PORTAL_URL         the controller (required)
//   PORTAL_USER, PORTAL_PASSWORD   an operator's login (skipped when the
//                      portal asks for none)
//   PORTAL_VM, PORTAL_SERVICE, PORTAL_SITE   what the lab has
//   PORTAL_KILL_PID    the VNF's pid: killed to make an alert fire
//   PORTAL_ARTIFACTS   where screenshots go (default target/artifacts/portal)
//   CHROMIUM           the browser (default /usr/bin/chromium)
//
// Exits 0 when every step passed; otherwise prints the step that failed
// and exits 1.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
const base = (env.PORTAL_URL || "").replace(/\/$/, "");
if (!base) {
  console.error("portal.mjs: set PORTAL_URL to the controller's address");
  process.exit(2);
}
const vm = env.PORTAL_VM || "pbx1";
const site = env.PORTAL_SITE || "site1";
const service = env.PORTAL_SERVICE || "";
const artifacts = env.PORTAL_ARTIFACTS || "target/artifacts/portal";
mkdirSync(artifacts, { recursive: true });

const LAPTOP = { width: 1366, height: 900 };
const PHONE = { width: 390, height: 844 };

let current = "start";
const step = (name) => {
  current = name;
  console.log(`portal: ${name}`);
};

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // We run as root in the test lab.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const errors = [];
try {
  const context = await browser.newContext({ viewport: LAPTOP });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => errors.push(`${page.url()}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${page.url()}: console: ${m.text()}`);
  });

  const shot = async (name) => {
    await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
  };
  // No horizontal scroll at the phone's width.
  const fitsPhone = async (name) => {
    await page.setViewportSize(PHONE);
    await page.waitForTimeout(200);
    const { scroll, width } = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      width: window.innerWidth,
    }));
    await shot(`${name}-phone`);
    await page.setViewportSize(LAPTOP);
    if (scroll > width) throw new Error(`${name}: ${scroll} px wide at a ${width} px phone: horizontal scroll`);
  };

  step("log in");
  await page.goto(base + "/");
  if (await page.locator('form[action="/login"] input[name="username"]').count()) {
    if (!env.PORTAL_USER) throw new Error("the portal asks for a login: set PORTAL_USER and PORTAL_PASSWORD");
    await shot("login");
    await page.fill('input[name="username"]', env.PORTAL_USER);
    await page.fill('input[name="password"]', env.PORTAL_PASSWORD || "");
    await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.click('button[type="submit"]')]);
  } else {
    console.log("portal: no login form (authentication not enabled): going on as the placeholder user");
  }

  step("dashboard lists the service and the VM");
  await page.waitForSelector(`tr[data-vm="${vm}"]`);
  if (service) await page.waitForSelector(`tr[data-service="${service}"]`);
  await page.waitForFunction(() => /live updates: on/.test(document.getElementById("live-state")?.textContent || ""));
  await shot("dashboard-laptop");
  await fitsPhone("dashboard");

  step("the VMs page lists every VM with its RPO status");
  await page.goto(base + "/vms");
  await page.waitForSelector(`tr[data-vm="${vm}"] .badge`);
  const total = Number(await page.getAttribute("p[data-protection]", "data-protection"));
  const rows = await page.locator("tr[data-vm]").count();
  if (!(total >= 1 && rows === Math.min(total, 100))) throw new Error(`the VMs page shows ${rows} rows of ${total} VMs`);
  await shot("vms-laptop");
  await fitsPhone("vms");
  await page.goto(base + "/");

  step("page weight of /");
  const weight = await page.evaluate(async () => {
    const size = async (u) => (await (await fetch(u, { credentials: "same-origin" })).arrayBuffer()).byteLength;
    return { html: await size("/"), css: await size("/static/portal.css"), js: await size("/static/portal.js") };
  });
  console.log(
    `portal: page weight of /: HTML ${weight.html} + CSS ${weight.css} + JS ${weight.js} = ${weight.html + weight.css + weight.js} bytes (uncompressed)`,
  );

  step("failover asks for the site's name typed out");
  const failover = page.locator(`tr[data-site="${site}"] button.danger`);
  await failover.click();
  const ok = page.locator("#confirm-ok");
  await page.waitForSelector("#confirm[open]");
  await page.fill("#confirm-input", site + "x");
  if (!(await ok.isDisabled())) throw new Error("the failover can be confirmed with the wrong site name");
  await page.fill("#confirm-input", site);
  if (await ok.isDisabled()) throw new Error("typing the site name does not enable the failover");
  await shot("failover-confirm");
  await page.click('#confirm button[value="cancel"]');
  await page.waitForSelector("#confirm[open]", { state: "detached" });
  await page.waitForSelector("#flash:has-text('cancelled')");

  step("take a point and see it appear without reloading");
  await page.goto(`${base}/vms/${vm}`);
  const before = await page.locator("tr[data-point]").count();
  await page.evaluate(() => {
    window.__noReload = true;
  });
  await page.click("button:has-text('Take a point now')");
  await page.waitForFunction((n) => document.querySelectorAll("tr[data-point]").length > n, before, { timeout: 60000 });
  if (!(await page.evaluate(() => window.__noReload === true))) throw new Error("the page reloaded");
  await shot("vm-laptop");
  await fitsPhone("vm");

  step("run a drill (its VM's name typed to confirm) and watch its job finish live");
  await page.click(`button:has-text('Drill ${vm}')`);
  await page.waitForSelector("#confirm[open]");
  await page.fill("#confirm-input", vm);
  await Promise.all([page.waitForURL(/\/jobs\/\d+$/), page.click("#confirm-ok")]);
  await page.evaluate(() => {
    window.__noReload = true;
  });
  await page.waitForSelector("#job[data-status='running'], #job[data-status='succeeded'], #job[data-status='failed']");
  await page.waitForSelector("#job[data-status='succeeded'], #job[data-status='failed']", { timeout: 180000 });
  const status = await page.getAttribute("#job", "data-status");
  if (!(await page.evaluate(() => window.__noReload === true))) throw new Error("the job page reloaded");
  await shot("drill-job-laptop");
  if (status !== "succeeded") {
    const steps = await page.locator("ol.steps").innerText();
    throw new Error(`the drill ${status}:\n${steps}`);
  }
  for (const s of ["boot [0]", "probe [0]", "report"]) {
    const st = await page.getAttribute(`li[data-step="${s}"]`, "data-state");
    if (st !== "succeeded") throw new Error(`drill step ${s} is ${st}`);
  }
  await fitsPhone("drill-job");

  step("the drill report is on the drills page");
  await page.goto(base + "/drills");
  await page.waitForSelector("tr[data-report] .badge.ok");
  await page.waitForSelector("figure.chart svg circle");
  await shot("drills-laptop");

  step("an alert fires and is acknowledged");
  await page.goto(base + "/alerts");
  if (env.PORTAL_KILL_PID) process.kill(Number(env.PORTAL_KILL_PID), "SIGKILL");
  const firing = page.locator("tr[data-alert][data-state='firing']").first();
  await firing.waitFor({ timeout: 60000 });
  const id = await firing.getAttribute("data-alert");
  await shot("alerts-firing-laptop");
  await page.click(`tr[data-alert="${id}"] button:has-text('Acknowledge')`);
  await page.waitForSelector(`tr[data-alert="${id}"][data-state="acknowledged"]`, { timeout: 15000 });
  await shot("alerts-acked-laptop");
  await fitsPhone("alerts");

  step("the dashboard shows the alert and the jobs");
  await page.goto(base + "/");
  await page.waitForSelector(`tr[data-alert="${id}"]`);
  await page.waitForSelector("tr[data-job]");
  await shot("dashboard-after-laptop");
  await fitsPhone("dashboard-after");

  step("make a template from the VM's page, see it on the templates page");
  await page.goto(`${base}/vms/${vm}`);
  await page.fill("#template-name", `${vm}-base`);
  await Promise.all([page.waitForURL(/\/templates$/), page.click("#make-template")]);
  const row = page.locator(`tr[data-template="${vm}-base"]`);
  await row.waitFor();
  const rowText = await row.innerText();
  if (!rowText.includes(`${vm}@`)) throw new Error(`the template row does not name its point: ${rowText}`);
  await shot("templates-laptop");
  await fitsPhone("templates");

  step("deploy a VM from the template at another site's host (disks only)");
  await page.fill("#deploy-name", `${vm}-copy`);
  await page.selectOption("#deploy-template", `${vm}-base`);
  const hosts = await page.locator("#deploy-host option").allTextContents();
  const other = hosts.find((h) => !h.includes(`(${site})`));
  if (!other) throw new Error("no host at another site: " + hosts.join(", "));
  await page.selectOption("#deploy-host", other.split(" ")[0]);
  await page.selectOption("#deploy-start", "false");
  await Promise.all([page.waitForURL(/\/vms$/), page.click("#deploy")]);
  await page.goto(`${base}/vms/${vm}-copy`);
  await page.waitForSelector(`text=${other.split(" ")[0]}`);
  await shot("vm-from-template-laptop");

  if (errors.length) throw new Error("errors in the page:\n" + errors.join("\n"));
  step("done");
} catch (e) {
  console.error(`portal: FAILED at "${current}": ${e.message}`);
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages.length) {
      const p = pages[0];
      console.error(`page ${p.url()}:\n` + (await p.locator("main").innerText()));
      console.error("alerts: " + (await p.evaluate(async () => (await fetch("/api/v1/alerts?state=all")).text())));
      await p.screenshot({ path: join(artifacts, "failure.png"), fullPage: true });
    }
  } catch (_) {
    // best effort
  }
  if (errors.length) console.error(errors.join("\n"));
  await browser.close();
  process.exit(1);
}
await browser.close();
