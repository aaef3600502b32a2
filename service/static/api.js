// The service's API as the page uses it: JSON in and out, errors in words, and the API key.
//
// When the service needs a key, an API route answers 401 (WWW-Authenticate: Bearer). The page then asks for
// the key once (askKey: a small form), keeps it in sessionStorage (gone when the tab closes) and sends it as
// "Authorization: Bearer <key>" on every call; a refused key is forgotten and asked for again.

const KEY_STORAGE = "alexnet.apiKey";

export class ApiError extends Error {
  constructor(status, message, body = {}, retryAfter = null) {
    super(message);
    this.status = status;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

let askKey = async () => null; // (message) => key, or null when the person declines
let asking = null; // one form at a time, however many calls were refused

export function onKeyNeeded(ask) {
  askKey = ask;
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

async function newKey(message) {
  if (!asking) {
    asking = askKey(message).finally(() => {
      asking = null;
    });
  }
  const key = await asking;
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  return key;
}

async function readBody(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.trim().slice(0, 300) };
  }
}

// What a failed call says, in words: the JSON error body's detail (the service's own routes) or error (/v2).
export function describe(status, body, statusText = "") {
  const detail = typeof body?.detail === "string" ? body.detail : body?.error;
  return detail || `${status} ${statusText}`.trim();
}

export async function api(path, init = {}) {
  for (;;) {
    const key = storedKey();
    const headers = new Headers(init.headers);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (error) {
      throw new ApiError(0, `The service could not be reached (${error.message}). Is it still running?`);
    }
    const body = await readBody(response);
    if (response.status === 401) {
      if (key) forgetKey();
      const why = key ? `The key was refused: ${describe(401, body)}` : "This service needs an API key.";
      if (await newKey(why)) continue;
      throw new ApiError(401, `${describe(401, body)} (no API key given)`, body);
    }
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      throw new ApiError(response.status, describe(response.status, body, response.statusText), body, retry);
    }
    return body;
  }
}
