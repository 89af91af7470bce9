// The live page of `realtime-server dev` in headless Chromium: a row inserted
// with SQL appears on the page; a row updated and deleted through the page's
// form changes in the database, and the page shows what the database has.
//
// Run by tests/tests/dev_command.rs, with a `realtime-server dev` running:
//   REALTIME_URL   the page, e.g. http://127.0.0.1:4000/
//   DATABASE_URL   the dev database (the `database:` line the command prints)
//   ARTIFACTS_DIR  where to save screenshots (default: ../artifacts)
//   CHROMIUM       the browser (default: /usr/bin/chromium, Debian's `chromium`)
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const URL_ = process.env.REALTIME_URL;
const DATABASE_URL = process.env.DATABASE_URL;
const ARTIFACTS = process.env.ARTIFACTS_DIR || join(here, "..", "artifacts");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT = { timeout: 15000 };

assert.ok(URL_, "set REALTIME_URL to the page of a running `realtime-server dev`");
assert.ok(DATABASE_URL, "set DATABASE_URL to the database `realtime-server dev` printed");
assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run tests/setup.sh (it installs Debian's chromium)`);

const step = (s) => console.log("ok - " + s);
const db = new pg.Client({ connectionString: DATABASE_URL });
await db.connect();
const profile = mkdtempSync(join(tmpdir(), "realtime-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(m.text()); });

  await page.goto(URL_);
  await page.waitForSelector('#status[data-state="live"]', WAIT);
  step("the page joined realtime:* and says it is live");
  await page.waitForSelector("#dev:not([hidden])", WAIT);
  const todos = 'section[data-table="public.todos"]';
  const row = (id) => `${todos} tbody tr[data-key="${id}"]`;
  const seeded = (await db.query("SELECT count(*)::int AS n FROM todos")).rows[0].n;
  await page.waitForFunction(
    ([sel, n]) => document.querySelectorAll(sel).length === n,
    [`${todos} tbody tr`, seeded],
    WAIT,
  );
  step(`dev mode: the form is shown and the table holds the ${seeded} demo rows`);

  // 1. A row inserted with SQL appears, in the table and in the feed.
  const title = `from SQL ${process.pid}`;
  const { rows: [inserted] } = await db.query(
    "INSERT INTO todos (title) VALUES ($1) RETURNING id::text AS id", [title]);
  const id = inserted.id;
  await page.waitForSelector(`${row(id)}:has-text("${title}")`, WAIT);
  await page.waitForSelector(`#feed li[data-type="INSERT"]:has-text("${title}")`, WAIT);
  step(`a row inserted with SQL (#${id}) appears on the page`);

  // 2. Update it through the form: pick it by clicking its row, edit, Update.
  const renamed = `renamed in the browser ${process.pid}`;
  await page.click(row(id));
  assert.equal(await page.inputValue("#dev-id"), id, "clicking a row selects it in the form");
  assert.equal(await page.inputValue("#dev-title"), title, "the form shows the row's title");
  await page.fill("#dev-title", renamed);
  await page.check("#dev-done");
  await page.click("#dev-update");
  await page.waitForSelector(`${row(id)}:has-text("${renamed}")`, WAIT);
  const update = page.locator('#feed li[data-type="UPDATE"]').first();
  await update.waitFor(WAIT);
  assert.match(await update.locator(".old").first().innerText(), new RegExp(title));
  assert.match(await update.locator(".new").first().innerText(), new RegExp(renamed));
  const { rows: [afterUpdate] } = await db.query("SELECT title, done FROM todos WHERE id = $1", [id]);
  assert.deepEqual(afterUpdate, { title: renamed, done: true }, "the database has the update");
  const cells = await page.locator(`${row(id)} td`).allInnerTexts();
  assert.ok(cells.includes(renamed) && cells.includes("✓"), `the page shows the update: ${cells}`);
  step("updated through the form: the database and the page agree, the feed shows old → new");

  // 3. Delete it through the form.
  await page.selectOption("#dev-id", id);
  await page.click("#dev-delete");
  await page.waitForSelector(row(id), { state: "detached", ...WAIT });
  await page.waitForSelector(`#feed li[data-type="DELETE"]:has-text("${renamed}")`, WAIT);
  const { rows: [gone] } = await db.query("SELECT count(*)::int AS n FROM todos WHERE id = $1", [id]);
  assert.equal(gone.n, 0, "the database no longer has the row");
  const onPage = await page.locator(`${todos} tbody tr`).count();
  const inDb = (await db.query("SELECT count(*)::int AS n FROM todos")).rows[0].n;
  assert.equal(onPage, inDb, "the page shows as many rows as the database has");
  step("deleted through the form: gone from the database and from the page");

  // 4. Insert through the form, then one more change from SQL, for the picture.
  await page.fill("#dev-title", "Buy oat milk");
  await page.click("#dev-insert");
  await page.waitForSelector(`${todos} tbody tr:has-text("Buy oat milk")`, WAIT);
  const { rows: [formRow] } = await db.query("SELECT id::text AS id, done FROM todos WHERE title = 'Buy oat milk'");
  assert.ok(formRow && formRow.done === false, "the form's insert is in the database");
  await db.query("UPDATE todos SET done = true WHERE id = (SELECT min(id) FROM todos WHERE NOT done)");
  await page.waitForSelector('#feed li[data-type="UPDATE"] >> nth=1', WAIT);
  step("inserted through the form; a second SQL update arrives");

  assert.deepEqual(pageErrors, [], "no errors on the page");

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.mouse.move(0, 0);
  await page.waitForTimeout(1700); // let the highlight animations finish
  await page.screenshot({ path: join(ARTIFACTS, "dev-page.png") });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `on a phone-sized screen the page does not scroll sideways (${overflow}px)`);
  await page.screenshot({ path: join(ARTIFACTS, "dev-page-phone.png"), fullPage: true });
  step(`screenshots in ${ARTIFACTS}; the page fits a 390 px wide screen`);
  console.log("PASS");
} finally {
  await db.end().catch(() => {});
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
