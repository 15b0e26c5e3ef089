// End-to-end test of the web UI in headless Chromium (Debian's), driven by playwright-core.
// Run by tests/it/ui.rs, which starts the broker, the lake and `lakepipe serve`, and passes:
//   LAKEPIPE_DEV_UI_URL, LAKEPIPE_DEV_UI_TOPIC, LAKEPIPE_DEV_UI_TOKEN, LAKEPIPE_DEV_UI_INGEST (JSON argv),
//   LAKEPIPE_DEV_UI_SHOTS (screenshot folder), CHROMIUM (browser path).
"use strict";
const { chromium } = require("playwright-core");
const { execFileSync } = require("child_process");
const path = require("path");

const url = process.env.LAKEPIPE_DEV_UI_URL;
const topic = process.env.LAKEPIPE_DEV_UI_TOPIC;
const shots = process.env.LAKEPIPE_DEV_UI_SHOTS;
const ingest = JSON.parse(process.env.LAKEPIPE_DEV_UI_INGEST);

function check(cond, what) {
  if (!cond) throw new Error("FAILED: " + what);
  console.log("ok: " + what);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const shot = (name) => page.screenshot({ path: path.join(shots, name + ".png"), fullPage: true });
  page.setDefaultTimeout(30000);

  // Access: the server wants a token; the page asks for it and then sends it on every call.
  await page.goto(url);
  await page.waitForSelector("#token-dialog[open]");
  await page.fill("#token-input", process.env.LAKEPIPE_DEV_UI_TOKEN);
  await page.click("#token-save");
  await page.waitForFunction((t) => document.querySelector("#overview-table").textContent.includes(t), topic);
  check(true, "the token dialog opened, and the overview lists the topic after it");
  await page.waitForFunction(() => document.querySelector("#breakers").textContent.includes("closed"));
  check(true, "the overview shows the broker's breaker as closed");
  await shot("overview");

  // Data entry: the form comes from the spec; the page validates before posting.
  await page.click("#tab-entry");
  await page.selectOption("#entry-topic", topic);
  check(await page.locator("#entry-form label.req").count() >= 5, "required fields are marked");
  const choices = await page.locator("#field-status option").allTextContents();
  check(choices.includes("completed") && choices.includes("refunded"), "enum choices come from the spec");
  await page.fill("#field-transaction_id", "ui-1");
  await page.fill("#field-user_id", "u-ui");
  await page.fill("#field-amount", "abc");
  await page.fill("#field-currency", "EUR");
  await page.selectOption("#field-status", "completed");
  await page.click("#entry-submit");
  await page.waitForSelector(".field-error");
  check((await page.textContent(".field-error")).includes("amount"), "a bad amount is refused in the page");
  await page.fill("#field-amount", "42.50");
  await page.click("#entry-submit");
  await page.waitForFunction(() => document.querySelector("#entry-result").textContent.includes("published"));
  check(true, "the record was published through HTTP ingest");
  await shot("entry");

  // Bulk upload with one bad line: that line's error is shown, nothing is published.
  const good = JSON.stringify({ transaction_id: "ui-2", user_id: "u", amount: 1, currency: "EUR", status: "pending", timestamp: "2026-01-02T10:00:00Z" });
  const bad = JSON.stringify({ transaction_id: "ui-3", user_id: "u", amount: 1, currency: "EUR", status: "lost", timestamp: "2026-01-02T10:00:00Z" });
  await page.setInputFiles("#bulk-file", { name: "upload.ndjson", mimeType: "application/x-ndjson", buffer: Buffer.from(good + "\n" + bad + "\n") });
  await page.click("#bulk-upload");
  await page.waitForSelector("#bulk-report li");
  const report = await page.textContent("#bulk-report");
  check(report.includes("line 2") && report.includes("status"), "the bad line's error is listed: " + report);
  await shot("upload");
  await page.fill("#gen-count", "5");
  await page.click("#gen-button");
  await page.waitForFunction(() => document.querySelector("#gen-result").textContent.includes("published 5"));
  check(true, "the generate button published 5 records");

  // Ingest, then find the record in the table browser and its history through changes().
  execFileSync(ingest[0], ingest.slice(1), { stdio: "inherit" });
  await page.click("#tab-tables");
  await page.selectOption("#table-select", topic);
  await page.waitForFunction(() => document.querySelector("#table-rows").textContent.includes("ui-1"));
  check(!(await page.textContent("#table-rows")).includes("ui-2"), "the refused upload published nothing");
  await page.selectOption("#filter-col", "transaction_id");
  await page.fill("#filter-val", "ui-1");
  await page.click("#filter-apply");
  await page.waitForFunction(() => document.querySelectorAll("#table-rows tbody tr").length === 1);
  check(true, "the row filter narrows to one row");
  await page.fill("#key-input", "ui-1");
  await page.click("#key-lookup");
  await page.waitForFunction(() => document.querySelector("#key-history").textContent.includes("insert"));
  check(true, "the key's change history shows its insert");
  await shot("tables");

  // SQL console: run a query, draw its chart with time on the x axis, and see an engine error.
  await page.click("#tab-sql");
  await page.waitForSelector("#examples .example");
  await page.fill("#sql-editor", `SELECT date, sum(amount) AS revenue, count(*) AS n FROM ${topic} GROUP BY date ORDER BY date`);
  await page.selectOption("#sql-engine", "duckdb");
  await page.click("#sql-run");
  await page.waitForFunction(() => document.querySelectorAll("#sql-result tbody tr").length > 0 && document.querySelector("#sql-info").textContent.includes("rows"));
  await page.click("#chart-line");
  await page.waitForSelector("#chart svg path.series");
  check((await page.getAttribute("#chart svg", "data-x")) === "date", "the line chart puts the date on the x axis");
  await page.click("#chart-bar");
  await page.waitForSelector("#chart svg rect.series");
  check(true, "a bar chart too");
  await shot("sql");
  await page.fill("#sql-editor", "SELECT nope FROM " + topic);
  await page.click("#sql-run");
  await page.waitForSelector("#sql-error:not(.hidden)");
  check((await page.textContent("#sql-error")).includes("nope"), "the engine's error is shown as it is");

  // Dead letters by topic and kind, with the raw payload.
  await page.click("#tab-dead");
  await page.waitForFunction((t) => [...document.querySelectorAll("#dead-topic option")].some((o) => o.value === t), topic);
  await page.selectOption("#dead-topic", topic);
  await page.selectOption("#dead-kind", "malformed_json");
  await page.click("#dead-load");
  await page.waitForFunction(() => document.querySelector("#dead-rows").textContent.includes("{not json"));
  check(true, "the dead letter is found with its raw payload");
  await shot("dead_letters");

  // Brokers: the topic with its partitions, the ingest's group with its lag from the lake,
  // and the live tail with each message's check against the spec.
  const group = process.env.LAKEPIPE_DEV_UI_GROUP;
  await page.click("#tab-brokers");
  await page.waitForFunction((t) => (document.querySelector(".broker[data-broker=kafka] table.topics") || { textContent: "" }).textContent.includes(t), topic);
  check(true, "the brokers page lists the topic's partitions on Kafka");
  await page.fill("#brokers-filter", topic);
  await page.waitForFunction(() => [...document.querySelectorAll(".broker[data-broker=kafka] table.topics tbody tr")].every((tr) => tr.textContent.includes(document.querySelector("#brokers-filter").value)));
  check(true, "the filter narrows the page to the topic");
  const groupRow = page.locator(".broker[data-broker=kafka] table.groups tbody tr", { hasText: group });
  await groupRow.first().waitFor();
  const cells = await groupRow.first().locator("td").allTextContents();
  check(cells[3] === topic && cells[6] !== "" && cells[8] === "0", "the ingest's group shows the lake's offset and no lag: " + cells.join(" | "));
  await page.selectOption("#tail-broker", "kafka");
  await page.selectOption("#tail-topic", topic);
  await page.click("#tail-latest");
  await page.waitForFunction(() => document.querySelector("#tail-info").textContent.includes("messages"));
  const tail = await page.textContent("#tail-rows");
  check(tail.includes("seed-1") && tail.includes("valid"), "the tail shows a valid message: " + (await page.textContent("#tail-info")));
  check(tail.includes("malformed_json") && (await page.locator("#tail-rows tr.invalid").count()) >= 1, "the tail marks the bad message with its dead-letter kind");
  check(await page.isDisabled("#tail-older"), "every message fits one page, so there is no older page");
  await shot("brokers");

  await browser.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
