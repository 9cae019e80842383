// The monthly DR report page in a real browser: headless Debian chromium
// driven by playwright-core. Started by crates/cli/tests/e2e/report.rs
// against a lab, or by hand:
//
//   PORTAL_URL=http://127.0.0.1:7780 PORTAL_USER=u PORTAL_PASSWORD=p \
//   REPORT_VM=pbx1 node tests/browser/report.mjs
//
// Environment:
//   PORTAL_URL                     the controller (required)
//   PORTAL_USER, PORTAL_PASSWORD   a login (skipped when the portal asks for none)
//   REPORT_VM                      a VM the user's report shows
//   REPORT_HIDDEN_VM               a VM it must not show (another tenant's)
//   PORTAL_ARTIFACTS               screenshots (default target/artifacts/report)
//   CHROMIUM                       the browser (default /usr/bin/chromium)
//
// Exits 0 when every step passed; otherwise prints the step that failed
// and exits 1.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
const base = (env.PORTAL_URL || "").replace(/\/$/, "");
if (!base) {
  console.error("report.mjs: set PORTAL_URL to the controller's address");
  process.exit(2);
}
const vm = env.REPORT_VM || "pbx1";
const hidden = env.REPORT_HIDDEN_VM || "";
const artifacts = env.PORTAL_ARTIFACTS || "target/artifacts/report";
mkdirSync(artifacts, { recursive: true });
const HEADER =
  "month,tenant,vm,groups,rpo_target_seconds,compliance_percent,measured_seconds,missed_seconds,worst_age_seconds,points,last_point";

let current = "start";
const step = (name) => {
  current = name;
  console.log(`report: ${name}`);
};

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const errors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => errors.push(`${page.url()}: ${e.message}`));

  step("log in");
  await page.goto(base + "/reports");
  if (await page.locator('form[action="/login"] input[name="username"]').count()) {
    await page.fill('input[name="username"]', env.PORTAL_USER || "");
    await page.fill('input[name="password"]', env.PORTAL_PASSWORD || "");
    await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.click('button[type="submit"]')]);
    await page.goto(base + "/reports");
  }

  step("the report shows the tenant's VM with its compliance, its drill, and no other tenant's VM");
  await page.waitForSelector(`tr[data-report-vm="${vm}"]`);
  await page.waitForSelector('nav a[href="/reports"][aria-current="page"]');
  const compliance = await page.textContent(`tr[data-report-vm="${vm}"] td:nth-child(4)`);
  if (!/\d+\.\d\d %/.test(compliance || "")) throw new Error(`compliance of ${vm}: ${compliance}`);
  if (hidden && (await page.locator(`tr[data-report-vm="${hidden}"]`).count()))
    throw new Error(`another tenant's VM ${hidden} is shown`);
  if (!(await page.locator("tr[data-report-drill]").count())) throw new Error("no drill row");
  const month = await page.getAttribute("[data-report-month]", "data-report-month");
  // Not live: no fragment to re-fetch, and the footer says so.
  if (await page.locator("[data-fragment]").count()) throw new Error("the report page re-fetches itself on events");
  if (!/not updated live/.test((await page.textContent("#live-state")) || "")) throw new Error("the footer does not say the page is not live");
  await page.screenshot({ path: join(artifacts, "report-laptop.png"), fullPage: true });

  step("the CSV link downloads the VMs' table");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click('a[data-csv="vms"]')]);
  const csv = readFileSync(await download.path(), "utf8");
  const lines = csv.split("\r\n").filter((l) => l);
  if (lines[0] !== HEADER) throw new Error(`CSV header: ${lines[0]}`);
  if (!lines.slice(1).some((l) => l.split(",")[2] === vm)) throw new Error(`no row of ${vm} in the CSV:\n${csv}`);
  if (hidden && lines.slice(1).some((l) => l.split(",")[2] === hidden)) throw new Error(`${hidden} in the CSV`);
  console.log(`report: downloaded ${download.suggestedFilename()} (${lines.length - 1} rows)`);

  step("no horizontal scroll at a 390 px phone");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  const { scroll, width } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    width: window.innerWidth,
  }));
  await page.screenshot({ path: join(artifacts, "report-phone.png"), fullPage: true });
  if (scroll > width) throw new Error(`${scroll} px wide at a ${width} px phone`);
  await page.setViewportSize({ width: 1366, height: 900 });

  step("the previous month is a month earlier");
  await page.click('a[rel="prev"]');
  await page.waitForFunction(
    (m) => document.querySelector("[data-report-month]")?.getAttribute("data-report-month") !== m,
    month,
  );
  const prev = await page.getAttribute("[data-report-month]", "data-report-month");
  const [y, mo] = month.split("-").map(Number);
  const want = mo === 1 ? `${y - 1}-12` : `${y}-${String(mo - 1).padStart(2, "0")}`;
  if (prev !== want) throw new Error(`previous of ${month}: ${prev}, not ${want}`);
  if (await page.locator("tr[data-report-drill]").count()) throw new Error("a drill in the previous month");

  if (errors.length) throw new Error(`page errors:\n${errors.join("\n")}`);
  console.log("report: done");
} catch (e) {
  console.log(`report: FAILED at "${current}": ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
