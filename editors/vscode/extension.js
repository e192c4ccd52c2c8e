// Starts `mlspec lsp` (stdio) for .merge and .extrap files; everything else comes from the server.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("mlspec").get("command");
  client = new LanguageClient(
    "mlspec",
    "mlspec",
    { command, args },
    { documentSelector: [{ scheme: "file", language: "mlspec-merge" }, { scheme: "file", language: "mlspec-extrap" }] }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
