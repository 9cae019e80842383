// Self-service in the portal, in a real browser (headless Debian chromium
// through playwright-core): a tenant's user makes a protection group with
// the form, changes it, restores a point of their own VM (typing its name
// to confirm) and deletes the group. Started by
// crates/cli/tests/e2e/selfservice.rs.
//
// Environment: PORTAL_URL, PORTAL_USER, PORTAL_PASSWORD (the tenant's
// user), PORTAL_VM (their VM, with a point), PORTAL_STORE (a datastore
// for the new group), PORTAL_ARTIFACTS, CHROMIUM.
//
// Exits 0 when every step passed; otherwise prints the step that failed
// and exits 1.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
const base = (env.PORTAL_URL || "").replace(/\/$/, "");
const vm = env.PORTAL_VM;
const store = env.PORTAL_STORE;
const artifacts = env.PORTAL_ARTIFACTS || "target/artifacts/selfservice";
mkdirSync(artifacts, { recursive: true });

let current = "start";
const step = (name) => {
  current = name;
  console.log(`selfservice: ${name}`);
};

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const errors = [];
try {
  const page = await (await browser.newContext({ viewport: { width: 1366, height: 900 } })).newPage();
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => errors.push(`${page.url()}: ${e.message}`));
  const shot = (name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });

  step("log in as the tenant's user");
  await page.goto(base + "/login");
  await page.fill('input[name="username"]', env.PORTAL_USER);
  await page.fill('input[name="password"]', env.PORTAL_PASSWORD);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.click('button[type="submit"]')]);

  step("make a group with the form");
  await page.goto(base + "/groups");
  await page.fill("#group-name", "web");
  await page.check(`#group-form input[name="members"][value="${vm}"]`);
  await page.check(`#group-form input[name="datastores"][value="${store}"]`);
  await page.fill("#group-schedule", "every 1h");
  await page.fill("#group-rpo", "2h");
  await page.fill("#group-keep", "5");
  await shot("group-form");
  await Promise.all([page.waitForURL((u) => u.pathname === "/groups"), page.click("#group-create")]);
  const row = page.locator('tr[data-group="web"]');
  await row.waitFor();
  const text = await row.textContent();
  if (!/every 1h/.test(text) || !/portal \/ API/.test(text) || !text.includes(vm)) throw new Error(`the new group's row: ${text}`);
  // Another tenant's groups are not listed; the file's of this tenant are.
  if ((await page.locator("tr[data-group]").count()) < 1) throw new Error("no group listed");
  await shot("groups");

  step("change it");
  await page.click('tr[data-group="web"] a:has-text("Edit")');
  await page.waitForSelector("#group-save");
  await page.fill("#group-schedule", "every 2h");
  await Promise.all([page.waitForURL((u) => u.pathname === "/groups" && !u.search), page.click("#group-save")]);
  await page.waitForFunction(() => /every 2h/.test(document.querySelector('tr[data-group="web"]')?.textContent || ""));

  step("a file's group has no edit or delete");
  const fileRows = page.locator('tr[data-group]:has(.badge.neutral)');
  for (let i = 0; i < (await fileRows.count()); i++) {
    if (await fileRows.nth(i).locator("button, a").count()) throw new Error("a group of standby.toml offers edit or delete");
  }

  step("restore a point of the VM, typing its name to confirm");
  await page.goto(base + `/vms/${vm}`);
  const restore = page.locator("tr[data-point] button.restore").first();
  await restore.click();
  await page.waitForSelector("#confirm[open]");
  await page.fill("#confirm-input", vm + "x");
  if (!(await page.locator("#confirm-ok").isDisabled())) throw new Error("a wrong name confirmed the restore");
  await page.fill("#confirm-input", vm);
  await page.click("#confirm-ok");
  await page.waitForFunction(() => /\/jobs\/\d+/.test(location.pathname) || document.getElementById("flash")?.className === "error");
  if (!/\/jobs\/\d+/.test(new URL(page.url()).pathname)) throw new Error(`the restore was refused: ${await page.textContent("#flash")}`);
  await page.waitForFunction(() => document.getElementById("job")?.dataset.status === "succeeded", null, { timeout: 60000 });
  await shot("restore-job");
  console.log(`selfservice: restore job ${page.url()}`);

  step("the VM page offers a drill with confirmation, and no failback at home");
  await page.goto(base + `/vms/${vm}`);
  await page.waitForSelector('button[data-post="/api/v1/runbooks/drill/run"][data-confirm]');
  if (await page.locator("#failback").count()) throw new Error("failback offered for a VM at its home site");

  step("delete the group");
  await page.goto(base + "/groups");
  await page.click('tr[data-group="web"] button.danger');
  await page.waitForSelector("#confirm[open]");
  await page.fill("#confirm-input", "web");
  await page.click("#confirm-ok");
  await page.waitForFunction(() => !document.querySelector('tr[data-group="web"]'));

  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log("selfservice: done");
} catch (e) {
  console.error(`selfservice: step "${current}" failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
