// The console's entry: the pages register themselves; the address picks one.
import { show } from './core.js';
import './events.js';
import './event.js';
import './targets.js';
import './dead.js';
import './try.js';

window.addEventListener('hashchange', show);
show();
